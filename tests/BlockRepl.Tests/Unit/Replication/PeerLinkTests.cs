using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>The sending side's bookkeeping, without sockets: acks, ahead, stream loss, block policy.</summary>
public sealed class PeerLinkTests
{
    private const long Size = 64L << 20;

    private static async Task<LinkTake> TakeAsync(PeerLink link, JournalBatchWriter writer) =>
        await link.TakeAsync(writer, 1 << 20, TimeSpan.FromSeconds(5), CancellationToken.None);

    [Fact]
    public async Task Sync_WriteCompletesOnApplied_FuaOnDurable()
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        Assert.Equal(1UL, link.OpenStream());
        Assert.False(link.StreamAccepted(fullResync: false));
        var plain = link.Submit(JournalRecordKind.Write, 0, 4096, new byte[4096], fua: false)!.AsValueTask();
        var fua = link.Submit(JournalRecordKind.Write, 4096, 4096, new byte[4096], fua: true)!.AsValueTask();
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        var take = await TakeAsync(link, writer);
        Assert.Equal(2, take.Records);

        Assert.True(link.OnAck(2, 2, 0));
        Assert.True(plain.IsCompletedSuccessfully);
        Assert.False(fua.IsCompleted);
        Assert.True(link.OnAck(2, 2, 2));
        Assert.True(fua.IsCompletedSuccessfully);
        Assert.True(link.IsDrained);
    }

    [Fact]
    public async Task OnAck_BeyondWhatWasSent_IsRejected()
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        link.OpenStream();
        link.StreamAccepted(false);
        _ = link.Submit(JournalRecordKind.Write, 0, 4096, new byte[4096], fua: false);
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        await TakeAsync(link, writer);
        Assert.False(link.OnAck(5, 5, 5));
        Assert.False(link.OnAck(1, 1, 2)); // durable beyond applied
    }

    [Fact]
    public async Task CloseStream_UnackedAndQueuedRecordsBecomeDirty_ContinuePolicyCompletesWaiters()
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        link.OpenStream();
        link.StreamAccepted(false);
        var sent = link.Submit(JournalRecordKind.Write, 0, 8192, new byte[8192], fua: false)!.AsValueTask();
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        await TakeAsync(link, writer);
        var queued = link.Submit(JournalRecordKind.Zero, 1 << 20, 1 << 20, default, fua: false)!.AsValueTask();
        link.CloseStream();
        Assert.True(sent.IsCompletedSuccessfully && queued.IsCompletedSuccessfully);
        Assert.Equal(8192 + (1 << 20), link.Snapshot().DirtyBytes);

        // While away, writes only mark the bitmap.
        Assert.Null(link.Submit(JournalRecordKind.Write, 4L << 20, 4096, new byte[4096], fua: true));
        Assert.Equal(8192 + (1 << 20) + 4096, link.Snapshot().DirtyBytes);
    }

    [Fact]
    public async Task BlockPolicy_WaitersHeldUntilTheResyncIsDurable()
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Block, 8 << 20);
        link.OpenStream();
        link.StreamAccepted(false);
        var write = link.Submit(JournalRecordKind.Write, 0, 4096, new byte[4096], fua: false)!.AsValueTask();
        link.CloseStream();
        Assert.False(write.IsCompleted);
        Assert.True(link.MustWait(4096));

        Assert.Equal(2UL, link.OpenStream());
        Assert.True(link.StreamAccepted(false)); // dirty: a resync must run
        Assert.True(link.BeginResync(full: false));
        Assert.True(link.TakeResyncRun(1 << 20, out var offset, out var length));
        link.SubmitResync(offset, length, new byte[length], skip: false);
        Assert.True(link.TryEndResync(0x77));
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        Assert.NotNull((await TakeAsync(link, writer)).Marker); // begin
        Assert.Equal(1, (await TakeAsync(link, writer)).Records);
        Assert.False((await TakeAsync(link, writer)).Marker!.Begin); // end
        Assert.False(write.IsCompleted);
        link.OnAck(2, 2, 2);
        Assert.True(write.IsCompletedSuccessfully);
    }

    [Fact]
    public async Task ResyncUnfinished_FalseOnceTheEndMarkerIsQueued_WhileResyncActiveLastsUntilItGoesOut()
    {
        // The resync loop waits on ResyncUnfinished: driving a resync again while its End marker waits to go out
        // would queue a second End.
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        link.MarkDirty(0, 4096);
        link.OpenStream();
        Assert.True(link.StreamAccepted(false));
        Assert.True(link.ResyncUnfinished);
        Assert.True(link.TakeResyncRun(1 << 20, out var offset, out var length));
        link.SubmitResync(offset, length, new byte[length], skip: false);
        Assert.True(link.TryEndResync(0x77));
        Assert.True(link.ResyncActive);
        Assert.False(link.ResyncUnfinished);
        Assert.True(link.TryEndResync(0x78)); // a second End for the same Begin is not queued
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        Assert.True((await TakeAsync(link, writer)).Marker!.Begin);
        Assert.Equal(1, (await TakeAsync(link, writer)).Records);
        var end = (await TakeAsync(link, writer)).Marker!;
        Assert.False(end.Begin);
        Assert.Equal(0x77UL, end.Generation);
        Assert.False(link.ResyncActive);
        var next = await link.TakeAsync(writer, 1 << 20, TimeSpan.FromMilliseconds(50), CancellationToken.None);
        Assert.True(next.Idle && next.Marker is null, "a second End marker was queued");

        link.MarkDirty(8192, 4096); // a later resync is unfinished again from its Begin
        Assert.True(link.BeginResync(full: false));
        Assert.True(link.ResyncUnfinished);
    }

    [Fact]
    public async Task Async_QueueOverflow_GoesAhead_DropsToBitmap_LeavesAheadOnceTheLinkDrained()
    {
        var link = new PeerLink(Size, ReplicationMode.Async, PeerLossPolicy.Continue, 2 << 20);
        link.OpenStream();
        link.StreamAccepted(false);
        for (var i = 0; i < 3; i++)
        {
            Assert.Null(link.Submit(JournalRecordKind.Write, (long)i << 20, 1 << 20, new byte[1 << 20], fua: false));
        }

        Assert.True(link.Ahead);
        Assert.Equal(1 << 20, link.Snapshot().DirtyBytes);
        Assert.Equal(1, link.Snapshot().AheadCount);
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        var take = await TakeAsync(link, writer);
        take = await TakeAsync(link, writer); // one 1 MiB record per batch: both are sent now
        Assert.Equal((1, 2UL), (take.Records, take.LastSeq));

        // Sent is not drained: 2 MiB are still on their way, so the link stays ahead (congestion counts them).
        Assert.True(link.Ahead);
        Assert.True(link.OnAck(take.LastSeq, 0, 0)); // the peer received everything
        Assert.False(link.Ahead);
        Assert.True(link.HasDirty);
        Assert.True(link.ResyncActive); // the dropped range comes back as a resync, Begin marker first
    }

    [Fact]
    public async Task ForcedEviction_BitsStayOnDiskUntilTheRecordIsSafe_ThenClear()
    {
        var dir = Directory.CreateTempSubdirectory("blockrepl-link-").FullName;
        try
        {
            using var meta = BlockRepl.Core.MetaFile.Create(Path.Combine(dir, "v.meta"), BlockRepl.Core.VolumeMetadata.CreateNew("v", Size, BlockRepl.Core.VolumeRole.Primary));
            var link = new PeerLink(Size, ReplicationMode.Async, PeerLossPolicy.Continue, 8 << 20);
            link.AttachStore(meta, null);
            link.OpenStream();
            link.StreamAccepted(false);
            const long extent5 = 5L << BlockRepl.Core.MetaFile.ExtentShift;
            Assert.Null(link.Submit(JournalRecordKind.Write, extent5 + 8192, 4096, new byte[4096], fua: false)); // async: no waiter
            using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
            var take = await TakeAsync(link, writer);

            link.Bitmap.PersistExtents([(5u, take.LastSeq)]); // evicted while its record is in flight
            Assert.Equal(1024, OnDiskBits(meta, 5));
            Assert.Equal(0, link.Snapshot().DirtyBytes); // memory is untouched: the record covers it

            link.Bitmap.PersistExtents([(5u, 0UL)]); // another eviction in the page, record still in flight: kept
            Assert.Equal(1024, OnDiskBits(meta, 5));
            Assert.True(link.OnAck(take.LastSeq, take.LastSeq, take.LastSeq)); // durable on the peer
            link.Bitmap.PersistExtents([(6u, 0UL)]); // the same page written again: the forced bits clear now
            Assert.Equal(0, OnDiskBits(meta, 5));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }

        static int OnDiskBits(BlockRepl.Core.MetaFile meta, int extent)
        {
            var words = new ulong[(Size + 4095) / 4096 / 64];
            meta.ReadBitmap(words);
            return words.Skip(extent * 16).Take(16).Sum(w => System.Numerics.BitOperations.PopCount(w));
        }
    }
}
