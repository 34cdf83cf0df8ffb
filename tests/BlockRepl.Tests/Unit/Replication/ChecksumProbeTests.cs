using BlockRepl.Core;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>Checksum probes on the link (verify, checksum resync) without sockets: order, replies, settling, stream loss.</summary>
public sealed class ChecksumProbeTests
{
    private const long Size = 64L << 20;

    private static async Task<LinkTake> TakeAsync(PeerLink link, JournalBatchWriter writer) =>
        await link.TakeAsync(writer, 1 << 20, TimeSpan.FromSeconds(5), CancellationToken.None);

    private static PeerLink Connected(bool checksums = true)
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        link.OpenStream();
        link.PeerChecksums = checksums;
        link.StreamAccepted(fullResync: false);
        return link;
    }

    [Fact]
    public void TryQueueProbe_NoStreamOrPeerWithoutTheFeature_Refused()
    {
        var idle = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        Assert.False(idle.TryQueueProbe(new ChecksumProbe(0, 65536, 65536, resync: false)));
        Assert.Equal("the peer is not connected", idle.ProbeRefusal());

        var old = Connected(checksums: false);
        Assert.False(old.TryQueueProbe(new ChecksumProbe(0, 65536, 65536, resync: false)));
        Assert.Contains("older version", old.ProbeRefusal(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Probe_GoesOutBetweenTheRecordsQueuedBeforeAndAfterIt()
    {
        var link = Connected();
        _ = link.Submit(JournalRecordKind.Write, 0, 4096, new byte[4096], fua: false);
        var probe = new ChecksumProbe(0, 1 << 20, 65536, resync: false);
        Assert.True(link.TryQueueProbe(probe));
        _ = link.Submit(JournalRecordKind.Write, 4096, 4096, new byte[4096], fua: false);

        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        var first = await TakeAsync(link, writer);
        Assert.Equal(1, first.Records);
        Assert.Equal(1UL, writer.FirstSeq);
        var second = await TakeAsync(link, writer);
        Assert.Same(probe, second.Probe);
        Assert.Equal(0, second.Records);
        var third = await TakeAsync(link, writer);
        Assert.Equal(1, third.Records);
        Assert.Equal(2UL, writer.FirstSeq);
        Assert.Equal(2, link.Snapshot().QueuedRecords); // sent, not yet acknowledged as received; the probe is no record
    }

    [Fact]
    public void OnChecksumReply_UnknownIdOrWrongHashCount_Rejected_RightOneCompletes()
    {
        var link = Connected();
        var probe = new ChecksumProbe(0, (1 << 20) - 4096, 65536, resync: false); // 16 chunks, the last one short
        Assert.True(link.TryQueueProbe(probe));
        Assert.False(link.OnChecksumReply(probe.Id + 1, new byte[16 * 32]));
        Assert.False(link.OnChecksumReply(probe.Id, new byte[15 * 32]));
        Assert.False(probe.PeerHashes.Task.IsCompleted);
        Assert.True(link.OnChecksumReply(probe.Id, new byte[16 * 32]));
        Assert.True(probe.PeerHashes.Task.IsCompletedSuccessfully);
        Assert.False(link.OnChecksumReply(probe.Id, new byte[16 * 32])); // answered once only
        Assert.Equal((1L, 16L * 32, 0L), link.ChecksumCounters);
    }

    [Fact]
    public void VerifyProbe_ChunksDirtyInTheBitmap_AreMarkedNotComparable()
    {
        var link = Connected();
        link.CloseStream();
        link.MarkDirty((2 << 16) + 100, 10); // inside chunk 2 of 64 KiB
        link.OpenStream();
        link.PeerChecksums = true;
        link.StreamAccepted(fullResync: false); // a resync is due now; the probe only records what is dirty
        var probe = new ChecksumProbe(0, 1 << 20, 65536, resync: false);
        Assert.True(link.TryQueueProbe(probe));
        Assert.Equal([false, false, true, false], probe.DirtyAtProbe![..4]);
        Assert.Single(probe.DirtyAtProbe!, d => d);
    }

    [Fact]
    public void ResyncProbe_DifferingChunksBackToTheBitmap_ResyncEndsOnlyWhenSettled()
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        link.MarkDirty(1 << 20, 1 << 20);
        link.OpenStream();
        link.PeerChecksums = true;
        Assert.True(link.StreamAccepted(fullResync: false));

        Assert.True(link.TakeChecksumRun(1 << 20, out var offset, out var length));
        Assert.Equal((1L << 20, 1 << 20), (offset, length));
        var probe = new ChecksumProbe(offset, length, 65536, resync: true);
        Assert.True(link.TryQueueProbe(probe));
        Assert.False(link.TakeChecksumRun(1 << 20, out _, out _));
        Assert.False(link.TryEndResync(1)); // the probe is outstanding: its range may still differ

        Assert.True(link.OnChecksumReply(probe.Id, new byte[16 * 32]));
        link.SettleResyncProbe(probe, [((1 << 20) + 65536, 65536)]);
        Assert.Equal(65536, link.Snapshot().DirtyBytes);
        Assert.Equal((1L << 20) - 65536, link.ChecksumCounters.EqualBytes);

        // The probing pass does not wrap to the differing chunk; the data pass (TakeResyncRun) does.
        Assert.False(link.TakeChecksumRun(1 << 20, out _, out _));
        Assert.Equal(65536, link.Snapshot().DirtyBytes);
        Assert.True(link.TakeResyncRun(256 << 10, out offset, out length));
        Assert.Equal(((1L << 20) + 65536, 65536), (offset, length));
        link.SubmitResync(offset, length, new byte[length], skip: false);
        Assert.True(link.TryEndResync(1));
    }

    [Fact]
    public void CloseStream_UnsettledResyncProbe_WholeRangeDirtyAgain_PeerHashesFail()
    {
        var link = new PeerLink(Size, ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        link.MarkDirty(0, 512 << 10);
        link.OpenStream();
        link.PeerChecksums = true;
        link.StreamAccepted(fullResync: false);
        Assert.True(link.TakeChecksumRun(1 << 20, out var offset, out var length));
        var probe = new ChecksumProbe(offset, length, 65536, resync: true);
        Assert.True(link.TryQueueProbe(probe));
        Assert.Equal(0, link.Snapshot().DirtyBytes);

        link.CloseStream();
        Assert.Equal(512 << 10, link.Snapshot().DirtyBytes);
        Assert.True(probe.PeerHashes.Task.IsFaulted);
        link.SettleResyncProbe(probe, []); // a late comparison changes nothing
        Assert.Equal(512 << 10, link.Snapshot().DirtyBytes);
    }

    [Fact]
    public void Merge_AdjacentChunksJoin_LastChunkEndsAtTheVolumeEnd()
    {
        var merged = Volume.Merge([0, 65536, 196608, 1048576 - 65536], 65536, 1048576 - 4096);
        Assert.Equal([new VolumeRange(0, 131072), new VolumeRange(196608, 65536), new VolumeRange(1048576 - 65536, 65536 - 4096)], merged);
    }

    [Fact]
    public void HashChunks_OneSha256PerChunk_LastChunkShort()
    {
        var data = new byte[100_000];
        new Random(3).NextBytes(data);
        var hashes = Volume.HashChunks(data, 65536);
        Assert.Equal(64, hashes.Length);
        Assert.Equal(System.Security.Cryptography.SHA256.HashData(data.AsSpan(65536)), hashes[32..]);
    }
}
