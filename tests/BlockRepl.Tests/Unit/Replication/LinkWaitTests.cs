using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary><see cref="PeerLink.WaitUntilAsync"/>: woken by the link's changes, not by a clock.</summary>
public sealed class LinkWaitTests
{
    private const long Size = 64L << 20;

    [Fact]
    public async Task WaitUntilAsync_DrainedByTheAck_CompletesOnTheAck()
    {
        var link = new PeerLink(Size, ReplicationMode.Async, PeerLossPolicy.Continue, 8 << 20);
        link.OpenStream();
        link.StreamAccepted(fullResync: false);
        _ = link.Submit(JournalRecordKind.Write, 0, 4096, new byte[4096], fua: false);
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        await link.TakeAsync(writer, 1 << 20, TimeSpan.FromSeconds(5), CancellationToken.None);

        var drained = link.WaitUntilAsync(l => l.IsDrained, Timeout.InfiniteTimeSpan, CancellationToken.None);
        await Task.Delay(50);
        Assert.False(drained.IsCompleted);
        Assert.True(link.OnAck(1, 1, 1));
        Assert.True(await drained.WaitAsync(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public async Task WaitUntilAsync_StreamCloses_ConditionOnStreamingCompletes()
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        link.OpenStream();
        link.StreamAccepted(fullResync: false);
        _ = link.Submit(JournalRecordKind.Write, 0, 4096, new byte[4096], fua: false);
        var ended = link.WaitUntilAsync(l => !l.Streaming || l.IsDrained, Timeout.InfiniteTimeSpan, CancellationToken.None);
        Assert.False(ended.IsCompleted);
        link.CloseStream();
        Assert.True(await ended.WaitAsync(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public async Task WaitUntilAsync_NothingChanges_FalseAfterTheTimeout()
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        Assert.False(await link.WaitUntilAsync(l => l.Streaming, TimeSpan.FromMilliseconds(100), CancellationToken.None));
    }
}
