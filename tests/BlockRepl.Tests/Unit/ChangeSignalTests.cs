using BlockRepl.Core;
using BlockRepl.Core.Replication;
using BlockRepl.Replication.Service;

namespace BlockRepl.Tests.Unit;

/// <summary>The change signal behind `status --watch`: a waiter wakes on a pulse and only then, and no pulse is lost.</summary>
public sealed class ChangeSignalTests
{
    private static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task WaitAsync_NoPulse_StaysPendingUntilThePulse()
    {
        var signal = new ChangeSignal();
        var seen = signal.Version;
        var wait = signal.WaitAsync(seen);
        await Task.Yield();
        Assert.False(wait.IsCompleted);

        signal.Pulse();
        await wait.WaitAsync(HangLimit);
        Assert.Equal(seen + 1, signal.Version);
        Assert.False(signal.WaitAsync(signal.Version).IsCompleted); // a new task for the next pulse
    }

    [Fact]
    public void WaitAsync_PulseBetweenReadAndWait_CompletesAtOnce()
    {
        var signal = new ChangeSignal();
        var seen = signal.Version;
        signal.Pulse(); // after the watcher looked, before it waits

        Assert.True(signal.WaitAsync(seen).IsCompletedSuccessfully);
    }

    [Fact]
    public async Task WaitAsync_Timeout_ReturnsFalseWithoutAPulse_TrueWithOne()
    {
        var signal = new ChangeSignal();
        Assert.False(await signal.WaitAsync(signal.Version, TimeSpan.FromMilliseconds(20), CancellationToken.None));

        var seen = signal.Version;
        var wait = signal.WaitAsync(seen, HangLimit, CancellationToken.None);
        Assert.False(wait.IsCompleted);
        signal.Pulse();
        Assert.True(await wait.WaitAsync(HangLimit));
    }

    [Fact]
    public async Task WaitAsync_Cancelled_ThrowsOperationCanceled()
    {
        var signal = new ChangeSignal();
        using var cts = new CancellationTokenSource();
        var wait = signal.WaitAsync(signal.Version, Timeout.InfiniteTimeSpan, cts.Token);
        Assert.False(wait.IsCompleted);

        await cts.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => wait.WaitAsync(HangLimit));
    }

    [Fact]
    public async Task WaitAsync_ManyConcurrentPulses_WaiterSeesTheLastOne()
    {
        // Pulsers race a waiter that looks, then waits for a newer version: if a pulse could be lost between the
        // look and the wait, the waiter would hang short of the final version.
        const int Pulsers = 4;
        const int PulsesEach = 5000;
        var signal = new ChangeSignal();
        const long Final = Pulsers * PulsesEach;
        var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var waiter = Task.Run(async () =>
        {
            var wakeups = 0;
            while (true)
            {
                var seen = signal.Version;
                if (seen == Final)
                {
                    return wakeups;
                }

                var wait = signal.WaitAsync(seen);
                waiting.TrySetResult();
                await wait;
                wakeups++;
            }
        });
        await waiting.Task.WaitAsync(HangLimit); // the pulses start once the waiter waits
        var pulsers = Enumerable.Range(0, Pulsers).Select(_ => Task.Run(() =>
        {
            for (var i = 0; i < PulsesEach; i++)
            {
                signal.Pulse();
            }
        }));
        await Task.WhenAll(pulsers).WaitAsync(HangLimit);

        var wakeups = await waiter.WaitAsync(HangLimit);
        Assert.Equal(Final, signal.Version);
        Assert.InRange(wakeups, 1, (int)Final);
    }

    [Fact]
    public async Task VolumeChanges_PromoteAndReportError_EachPulse()
    {
        using var temp = new TempVolume(role: VolumeRole.Secondary);
        var changes = temp.Volume.Changes;
        var seen = changes.Version;
        var promoted = changes.WaitAsync(seen);
        Assert.False(promoted.IsCompleted);

        Assert.True(temp.Volume.Promote(force: true).Done);
        await promoted.WaitAsync(HangLimit);
        Assert.Equal(VolumeRole.Primary, temp.Volume.Role);

        seen = changes.Version;
        var failed = changes.WaitAsync(seen);
        Assert.False(failed.IsCompleted);
        temp.Volume.ReportError("test: an error a person watches for");
        await failed.WaitAsync(HangLimit);
        Assert.True(changes.Version > seen);
    }

    [Fact]
    public async Task VolumeChanges_LinkConnects_Pulses()
    {
        using var temp = new TempVolume();
        temp.Volume.AttachPeer(ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        var link = temp.Volume.Link!;
        var seen = temp.Volume.Changes.Version;
        var connected = temp.Volume.Changes.WaitAsync(seen);
        Assert.False(connected.IsCompleted);

        link.OpenStream();
        Assert.False(link.StreamAccepted(fullResync: false));
        await connected.WaitAsync(HangLimit);
        Assert.Equal(ConnectionState.Connected, temp.Volume.Connection);
    }

    [Theory]
    [InlineData(0u, 0u, 250, 1000)]        // the defaults
    [InlineData(100u, 10_000u, 100, 10_000)]
    [InlineData(1u, 0u, 50, 1000)]          // the least interval has a floor
    [InlineData(2000u, 500u, 2000, 2000)]   // the most interval is never below the least
    [InlineData(0u, uint.MaxValue, 250, 3_600_000)] // and never above the ceiling
    public void WatchIntervals_Asked_KeptWithinTheLimits(uint minMs, uint maxMs, int leastMs, int mostMs)
    {
        var (least, most) = AdminService.WatchIntervals(minMs, maxMs);
        Assert.Equal(TimeSpan.FromMilliseconds(leastMs), least);
        Assert.Equal(TimeSpan.FromMilliseconds(mostMs), most);
    }
}
