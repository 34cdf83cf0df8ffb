using BlockRepl.Core;

namespace BlockRepl.Tests.Unit;

public sealed class CoalescingFlushTests
{
    [Fact]
    public async Task Flush_RequestedDuringARunningRound_WaitsForTheNextRound()
    {
        using var firstStarted = new ManualResetEventSlim();
        using var releaseFirst = new ManualResetEventSlim();
        var calls = 0;
        var flush = new CoalescingFlush(() =>
        {
            if (Interlocked.Increment(ref calls) == 1)
            {
                firstStarted.Set();
                releaseFirst.Wait();
            }
        });

        var first = flush.FlushAsync();
        Assert.True(firstStarted.Wait(TimeSpan.FromSeconds(10)));

        // Three requests while the first fdatasync runs: it may have started before their writes, so
        // none of them may complete with it; all three share one later round.
        var late = new[] { flush.FlushAsync(), flush.FlushAsync(), flush.FlushAsync() };
        Assert.Same(late[0], late[1]);
        Assert.False(late[0].IsCompleted);

        releaseFirst.Set();
        await first;
        await Task.WhenAll(late);
        Assert.Equal(2, calls);
    }

    [Fact]
    public async Task Flush_WhenFdatasyncFails_FaultsThatRoundOnly()
    {
        var calls = 0;
        var flush = new CoalescingFlush(() =>
        {
            if (Interlocked.Increment(ref calls) == 1)
            {
                throw new BlockImageException("injected", 5);
            }
        });

        var error = await Assert.ThrowsAsync<BlockImageException>(() => flush.FlushAsync());
        Assert.Equal(5, error.Errno);
        await flush.FlushAsync(); // the next round runs a new fdatasync and succeeds
        Assert.Equal(2, calls);
    }
}
