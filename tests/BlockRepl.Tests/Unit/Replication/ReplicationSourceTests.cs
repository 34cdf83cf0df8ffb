using BlockRepl.Core;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>The sending side without a gRPC stream: the handshake's description, the stream's close, the resync driver.</summary>
public sealed class ReplicationSourceTests
{
    private const long Size = 16 << 20;

    private static ReplicationSource Attach(TempVolume temp, ReplicationMode mode = ReplicationMode.Async)
    {
        temp.Volume.AttachPeer(mode, PeerLossPolicy.Continue, 8 << 20);
        return temp.Volume.Source!;
    }

    private static async Task<LinkTake> TakeAsync(PeerLink link, JournalBatchWriter writer)
    {
        writer.Reset();
        return await link.TakeAsync(writer, 1 << 20, TimeSpan.FromSeconds(5), CancellationToken.None);
    }

    [Fact]
    public async Task DescribeForHandshake_AfterWritesWithoutAStream_AnnouncesTheNextSeqAndTheCurrentGeneration()
    {
        using var temp = new TempVolume(Size);
        var source = Attach(temp);
        var before = source.DescribeForHandshake();

        await temp.Volume.Write(0, new byte[4096], fua: false); // no stream: into the bitmap, and a new generation

        var opening = source.DescribeForHandshake();
        Assert.Equal(before.FirstSeq, opening.FirstSeq); // a write without a stream gets no seq
        Assert.Equal(temp.Volume.VolumeUuid, opening.VolumeUuid);
        Assert.Equal(temp.Volume.Generations.Current, opening.Generations.Current);
        Assert.NotEqual(before.Generations.Current, opening.Generations.Current);
        Assert.Equal(before.Generations.Current, opening.Generations.Bitmap); // the bitmap counts from the old one
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task StreamClosed_PeerAtOrNotAtTheCurrentGeneration_NextWriteStartsANewGenerationOnlyWhenItWas(bool peerAtCurrent)
    {
        using var temp = new TempVolume(Size);
        var source = Attach(temp);
        var current = temp.Volume.Generations.Current;

        Assert.False(source.StreamAccepted(fullResync: false, peerGeneration: peerAtCurrent ? current : current + 1, targetFresh: false, peerInconsistent: false));
        Assert.True(source.Streaming);
        Assert.Equal(ConnectionState.Connected, temp.Volume.Connection);

        source.StreamClosed();
        Assert.False(source.Streaming);
        await temp.Volume.Write(0, new byte[4096], fua: false);

        var after = temp.Volume.Generations;
        if (peerAtCurrent)
        {
            Assert.NotEqual(current, after.Current);
            Assert.Equal(current, after.Bitmap);
        }
        else
        {
            Assert.Equal(current, after.Current);
        }
    }

    [Fact]
    public async Task StreamClosed_RecordNotAcknowledged_ItsRangeIsDirtyAgain()
    {
        using var temp = new TempVolume(Size);
        var source = Attach(temp);
        Assert.False(source.StreamAccepted(false, temp.Volume.Generations.Current, false, false));
        await temp.Volume.Write(1 << 20, new byte[4096], fua: false); // async: acknowledged locally, queued for the peer
        Assert.Equal(0, temp.Volume.ReplicationSnapshot!.Value.DirtyBytes);

        source.StreamClosed();

        Assert.True(temp.Volume.ReplicationSnapshot!.Value.DirtyBytes >= 4096);
        Assert.Equal(ConnectionState.Connecting, temp.Volume.Connection);
    }

    [Fact]
    public async Task RunResyncAsync_RangeWrittenWhileAway_SendsTheImagesBytesThenTheEndMarkerWithTheCurrentGeneration()
    {
        using var temp = new TempVolume(Size);
        var source = Attach(temp);
        var data = Enumerable.Repeat((byte)0xAB, 4096).ToArray();
        await temp.Volume.Write(1 << 20, data, fua: false); // no stream: dirty
        Assert.True(source.StreamAccepted(fullResync: false, peerGeneration: 1, targetFresh: false, peerInconsistent: false));
        var log = new List<string>();

        await source.RunResyncAsync(full: false, log.Add, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(10));

        Assert.Equal(0, temp.Volume.ReplicationSnapshot!.Value.DirtyBytes);
        Assert.Contains(log, l => l.StartsWith("bitmap resync of ", StringComparison.Ordinal));
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        Assert.True((await TakeAsync(source.Link, writer)).Marker!.Begin);
        var take = await TakeAsync(source.Link, writer);
        Assert.True(take.Records > 0);
        var reader = new JournalBatchReader(writer.Packed, writer.FirstSeq, (uint)writer.RecordCount, writer.PackedCrc32C);
        var sentData = false;
        while (reader.TryReadNext(out var header, out var payload))
        {
            if (header.Kind == JournalRecordKind.Write && (long)header.Offset <= 1 << 20 && (long)(header.Offset + header.Length) >= (1 << 20) + 4096)
            {
                var at = (1 << 20) - (int)header.Offset;
                Assert.Equal(data, payload.Slice(at, 4096).ToArray());
                sentData = true;
            }
        }

        Assert.True(sentData);
        var end = (await TakeAsync(source.Link, writer)).Marker!;
        Assert.False(end.Begin);
        Assert.Equal(temp.Volume.Generations.Current, end.Generation);
    }
}
