namespace BlockRepl.Core;

/// <summary>
/// Group commit for fdatasync: concurrent flush requests share one system call.
/// </summary>
/// <remarks>
/// Invariant: a flush requested at time T completes only after an fdatasync that *started* after T.
/// A request that arrives while a round is running therefore joins the next round, never the running
/// one (whose fdatasync may have begun before the caller's writes completed). At most one fdatasync
/// runs at a time; at most two rounds exist (running and next).
/// </remarks>
internal sealed class CoalescingFlush
{
    private readonly Action _flush;
    private readonly Lock _gate = new();
    private TaskCompletionSource? _running;
    private TaskCompletionSource? _next;

    public CoalescingFlush(Action flush) => _flush = flush;

    public Task FlushAsync()
    {
        lock (_gate)
        {
            if (_running is not null)
            {
                _next ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                return _next.Task;
            }

            _running = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var task = _running.Task;
            // fdatasync blocks; it runs on a pool thread so the caller's connection keeps reading requests.
            ThreadPool.UnsafeQueueUserWorkItem(static self => self.RunRounds(), this, preferLocal: false);
            return task;
        }
    }

    private void RunRounds()
    {
        while (true)
        {
            TaskCompletionSource round;
            lock (_gate)
            {
                round = _running!;
            }

            try
            {
                _flush();
                round.SetResult();
            }
            catch (Exception ex)
            {
                // A pool thread is a boundary: every failure goes to the waiters, none escapes.
                round.SetException(ex);
            }

            lock (_gate)
            {
                _running = _next;
                _next = null;
                if (_running is null)
                {
                    return;
                }
            }
        }
    }
}
