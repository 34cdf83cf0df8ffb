using BlockRepl.Core;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;
using BlockRepl.Nbd;
using System.Buffers.Binary;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>Volume.ReadAsync: synchronous from the local image; through the peer, without a waiting thread, once diskless.</summary>
public sealed class DisklessReadTests
{
    private const long Size = 16 << 20;

    /// <summary>A sync primary whose stream the peer accepted, with a peer that serves reads.</summary>
    private static PeerLink Connected(TempVolume temp)
    {
        temp.Volume.AttachPeer(ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        var source = temp.Volume.Source!;
        source.Link.PeerServesReads = true;
        Assert.False(source.StreamAccepted(false, temp.Volume.Generations.Current, targetFresh: false, peerInconsistent: false));
        return source.Link;
    }

    private static async Task<PeerRead> TakeReadAsync(PeerLink link)
    {
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        var take = await link.TakeAsync(writer, 1 << 20, TimeSpan.FromSeconds(5), CancellationToken.None);
        return take.Read ?? throw new Xunit.Sdk.XunitException($"expected a read through the peer, got {take}");
    }

    [Fact]
    public async Task ReadAsync_LocalImage_CompletesSynchronouslyWithTheImagesBytes()
    {
        using var temp = new TempVolume(Size);
        var data = Enumerable.Repeat((byte)0x3C, 8192).ToArray();
        await temp.Volume.Write(8192, data, fua: false);
        var buffer = new byte[8192];

        var read = temp.Volume.ReadAsync(8192, buffer);

        Assert.True(read.IsCompletedSuccessfully);
        Assert.Equal(data, buffer);
    }

    [Fact]
    public async Task ReadAsync_DiskFailsWithAPeerConnected_DetachesAndCompletesWithThePeersBytesWhenItAnswers()
    {
        using var temp = new TempVolume(Size);
        var link = Connected(temp);
        temp.Volume.InjectDiskFailures = true;
        var buffer = new byte[4096];

        var read = temp.Volume.ReadAsync(65536, buffer);

        Assert.False(read.IsCompleted); // waits for the peer, holding no thread
        Assert.Equal(DiskState.Diskless, temp.Volume.Disk);
        var request = await TakeReadAsync(link);
        Assert.Equal((65536L, 4096), (request.Offset, request.Length));
        var peerBytes = Enumerable.Repeat((byte)0xD1, 4096).ToArray();
        Assert.True(link.OnReadReply(request.Id, peerBytes, ""));
        await read.AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(peerBytes, buffer);

        Assert.False(temp.Volume.TryReadLocal(0, new byte[4096])); // diskless: every read goes through the peer
    }

    [Fact]
    public async Task ReadAsync_Diskless_PeerCannotRead_FailsWithEio()
    {
        using var temp = new TempVolume(Size);
        var link = Connected(temp);
        temp.Volume.InjectDiskFailures = true;

        var read = temp.Volume.ReadAsync(0, new byte[4096]);
        var request = await TakeReadAsync(link);
        Assert.True(link.OnReadReply(request.Id, default, "the peer's disk failed too"));

        var ex = await Assert.ThrowsAsync<BlockImageException>(() => read.AsTask().WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Contains("the peer's disk failed too", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TryReadLocal_DiskFailsWithoutAPeer_ThrowsAndStaysAttached()
    {
        using var temp = new TempVolume(Size);
        temp.Volume.InjectDiskFailures = true;

        Assert.Throws<BlockImageException>(() => temp.Volume.TryReadLocal(0, new byte[4096]));
        Assert.NotEqual(DiskState.Diskless, temp.Volume.Disk);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task NbdRead_Diskless_AnsweredFromThePeerOnceItReplies_InChunksOrOneSimpleReply(bool structured)
    {
        using var temp = new TempVolume(Size);
        var link = Connected(temp);
        temp.Volume.InjectDiskFailures = true;
        var detach = temp.Volume.ReadAsync(0, new byte[4096]); // the failing local read detaches the disk
        Assert.True(link.OnReadReply((await TakeReadAsync(link)).Id, new byte[4096], ""));
        await detach.AsTask().WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(DiskState.Diskless, temp.Volume.Disk);

        const int Length = 300 << 10; // more than one structured chunk (256 KiB)
        var script = new NbdScript().ClientFlags();
        script = structured ? script.StructuredReply().Go("vol") : script.Go("vol");
        var input = script.Request(NbdProtocol.CmdRead, 7, 4096, Length).Request(NbdProtocol.CmdDisc, 8, 0, 0).ToArray();
        var session = Task.Run(() => temp.RunSession(input)); // the session ends once every reply is out

        var request = await TakeReadAsync(link);
        Assert.Equal((4096L, Length), (request.Offset, request.Length));
        Assert.False(session.IsCompleted); // the reply waits for the peer
        var peerBytes = new byte[Length];
        new Random(5).NextBytes(peerBytes);
        Assert.True(link.OnReadReply(request.Id, peerBytes, ""));
        var r = new NbdReplyReader(await session.WaitAsync(TimeSpan.FromSeconds(10)));

        r.ExpectGreeting();
        if (structured)
        {
            r.OptionReplies(NbdProtocol.OptStructuredReply);
        }

        r.OptionReplies(NbdProtocol.OptGo);
        if (!structured)
        {
            Assert.Equal((0u, 7UL), r.SimpleReply());
            Assert.Equal(peerBytes, r.Bytes(Length));
        }
        else
        {
            var first = r.Chunk();
            Assert.Equal(((ushort)0, NbdProtocol.ReplyTypeOffsetData, 7UL), (first.Flags, first.Type, first.Cookie));
            Assert.Equal(4096UL, BinaryPrimitives.ReadUInt64BigEndian(first.Payload));
            var last = r.Chunk();
            Assert.Equal((NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeOffsetData, 7UL), (last.Flags, last.Type, last.Cookie));
            Assert.Equal(4096UL + (ulong)(first.Payload.Length - 8), BinaryPrimitives.ReadUInt64BigEndian(last.Payload));
            Assert.Equal(peerBytes, first.Payload[8..].Concat(last.Payload[8..]).ToArray());
        }

        Assert.Equal(0, r.Remaining);
    }
}
