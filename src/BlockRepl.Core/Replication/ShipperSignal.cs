using System.Threading.Tasks.Sources;

namespace BlockRepl.Core.Replication;

/// <summary>
/// The shipper's wake-up: one reusable awaitable that completes with true when work arrives (<see cref="Set"/>), or
/// with false when the idle time passes or the wait is cancelled. Replaces a <see cref="TaskCompletionSource"/> plus
/// a <see cref="Task.Delay(TimeSpan, CancellationToken)"/> timer per wait, so an idle-to-busy cycle allocates nothing.
/// </summary>
/// <remarks>
/// One waiter at a time (the link's shipper). <see cref="Arm"/> and <see cref="Set"/> are called under the link's
/// lock, which orders them: work that arrives before the arm is seen by the shipper's check of the queue under the
/// same lock. The timer and a cancellation may race with <see cref="Set"/>; whichever disarms first completes the
/// wait, the others find it disarmed. A timer that fires late into the next wait only makes that wait end early as
/// idle (the shipper then sends a keepalive): harmless. The timer is disarmed after every wait, so a link that is
/// dropped leaves nothing scheduled (and nothing to dispose).
/// </remarks>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "The timer is disarmed after every wait: nothing stays scheduled to dispose.")]
internal sealed class ShipperSignal : IValueTaskSource<bool>
{
    private readonly Timer _timer;
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private CancellationTokenRegistration _cancel;
    private int _armed;

    public ShipperSignal() => _timer = new Timer(static s => ((ShipperSignal)s!).Disarm(false), this, Timeout.Infinite, Timeout.Infinite);

    /// <summary>True while a wait is pending.</summary>
    public bool Armed => Volatile.Read(ref _armed) != 0;

    /// <summary>Starts a wait (under the link's lock); await the result outside it.</summary>
    public ValueTask<bool> Arm(TimeSpan idle, CancellationToken cancellationToken)
    {
        _core.Reset();
        Volatile.Write(ref _armed, 1);
        _timer.Change(idle, Timeout.InfiniteTimeSpan);
        if (cancellationToken.CanBeCanceled)
        {
            _cancel = cancellationToken.UnsafeRegister(static s => ((ShipperSignal)s!).Disarm(false), this);
        }

        return new ValueTask<bool>(this, _core.Version);
    }

    /// <summary>Work arrived: ends a pending wait with true (no-op when none is pending).</summary>
    public void Set() => Disarm(true);

    private void Disarm(bool woken)
    {
        if (Interlocked.Exchange(ref _armed, 0) == 1)
        {
            _core.SetResult(woken);
        }
    }

    public bool GetResult(short token)
    {
        var result = _core.GetResult(token);
        _timer.Change(Timeout.Infinite, Timeout.Infinite);
        _cancel.Dispose();
        _cancel = default;
        return result;
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
