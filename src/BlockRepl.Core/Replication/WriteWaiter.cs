using System.Threading.Tasks.Sources;

namespace BlockRepl.Core.Replication;

/// <summary>
/// What one write (or flush) waits for from the peer: applied, or durable for FUA and flushes. A pooled, reusable
/// awaitable, so a replicated sync write allocates nothing for its acknowledgement.
/// </summary>
/// <remarks>
/// The rules that make reuse safe: <see cref="PeerLink"/> completes a waiter exactly once (it completes only what it
/// has just taken out of one of its queues), its holder awaits <see cref="AsValueTask"/> at most once, and the waiter
/// goes back to its pool only in <see cref="GetResult"/>, the end of that await. A waiter nobody awaits (its write
/// failed locally and threw) is simply left to the garbage collector.
/// </remarks>
internal sealed class WriteWaiter : IValueTaskSource
{
    private readonly WriteWaiterPool _pool;
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };

    public WriteWaiter(WriteWaiterPool pool) => _pool = pool;

    /// <summary>The awaitable for the current use; take it once.</summary>
    public ValueTask AsValueTask() => new(this, _core.Version);

    /// <summary>The peer has the write: the waiting write goes on, on the thread pool (never on the completing thread).</summary>
    public void Complete() => _core.SetResult(true);

    /// <summary>The write must not be reported done (no longer primary, volume closing).</summary>
    public void Fail(Exception reason) => _core.SetException(reason);

    public void GetResult(short token)
    {
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            _core.Reset();
            _pool.Return(this);
        }
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}

/// <summary>A bounded free list of <see cref="WriteWaiter"/>s (its lock is a leaf: <see cref="LocksAndLimits"/>).</summary>
internal sealed class WriteWaiterPool
{
    private readonly Lock _gate = new();
    private readonly Stack<WriteWaiter> _free = new();

    public WriteWaiter Rent()
    {
        lock (_gate)
        {
            if (_free.TryPop(out var waiter))
            {
                return waiter;
            }
        }

        return new WriteWaiter(this);
    }

    public void Return(WriteWaiter waiter)
    {
        lock (_gate)
        {
            if (_free.Count < LocksAndLimits.MaxPooledWaiters)
            {
                _free.Push(waiter);
            }
        }
    }
}
