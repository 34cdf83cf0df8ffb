namespace BlockRepl.Core;

/// <summary>
/// "Something a person watches changed": a version counter and a task that completes at the next
/// <see cref="Pulse"/>. A watcher reads <see cref="Version"/>, looks at the state, then waits with
/// <see cref="WaitAsync"/> for a version other than the one it read, so a pulse that comes between its look and its
/// wait is never lost: the wait returns at once.
/// </summary>
/// <remarks>
/// Lock-free: <see cref="Pulse"/> may be called under any lock of <see cref="LocksAndLimits"/> (it takes none) and
/// from any thread; waiters' continuations run on the thread pool, never on the pulsing thread.
/// <para>Invariant: the task in <see cref="_next"/> completes at the first pulse after it was installed. A pulse
/// increments <see cref="_version"/> first, then swaps in a new task, then completes the old one. A waiter reads
/// <see cref="_next"/> first, then the version: if it got the new task, the increment before the swap is visible to
/// it and it returns at once; if it got the old task, that task completes.</para>
/// <para>Cost: one task allocation per pulse; pulses come at state changes (role, disk, connection, errors), never
/// per request.</para>
/// </remarks>
public sealed class ChangeSignal
{
    private long _version;
    private TaskCompletionSource _next = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>How many pulses there were; read it before reading the state it stands for.</summary>
    public long Version => Volatile.Read(ref _version);

    /// <summary>Records a change and wakes every waiter.</summary>
    public void Pulse()
    {
        Interlocked.Increment(ref _version);
        Interlocked.Exchange(ref _next, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
    }

    /// <summary>
    /// Completes when <see cref="Version"/> is no longer <paramref name="seen"/>: at once when a pulse came after it
    /// was read, else at the next pulse. It never faults and is never cancelled; bound it with
    /// <see cref="WaitAsync(long, TimeSpan, CancellationToken)"/>.
    /// </summary>
    public Task WaitAsync(long seen)
    {
        var next = Volatile.Read(ref _next);
        return Volatile.Read(ref _version) != seen ? Task.CompletedTask : next.Task;
    }

    /// <summary>
    /// Waits up to <paramref name="timeout"/> for a version other than <paramref name="seen"/>. Returns true when
    /// there was a pulse, false when the time ran out; throws <see cref="OperationCanceledException"/> on
    /// cancellation.
    /// </summary>
    public async Task<bool> WaitAsync(long seen, TimeSpan timeout, CancellationToken cancellationToken)
    {
        await WaitAsync(seen).WaitAsync(timeout, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        cancellationToken.ThrowIfCancellationRequested();
        return Version != seen;
    }
}
