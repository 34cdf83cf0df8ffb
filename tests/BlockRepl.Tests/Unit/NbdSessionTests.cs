using System.Buffers.Binary;
using System.Text;
using BlockRepl.Nbd;

namespace BlockRepl.Tests.Unit;

/// <summary>Whole connections (handshake + transmission) against a real volume, over an in-memory transport.</summary>
public sealed class NbdSessionTests : IDisposable
{
    private readonly TempVolume _vol = new();

    public void Dispose() => _vol.Dispose();

    private static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>A session that exercises every option and command whose reply does not depend on timing.</summary>
    private static byte[] FullSession() => new NbdScript()
        .ClientFlags()
        .Option(0x7777, Pattern(100, 1))                 // unknown: ERR_UNSUP, stream stays in sync
        .Option(NbdProtocol.OptList, [])
        .StructuredReply()
        .ListMetaContext("vol")
        .SetMetaContext("vol", "base:allocation", "qemu:nothing")
        .Info("vol", NbdProtocol.InfoName, NbdProtocol.InfoDescription, NbdProtocol.InfoBlockSize)
        .Go("vol", NbdProtocol.InfoBlockSize)
        .Request(NbdProtocol.CmdWrite, 1, 4095, 5000, payload: Pattern(5000, 2))
        .Request(NbdProtocol.CmdRead, 2, 4095, 5000)
        .Request(NbdProtocol.CmdRead, 3, 1 << 20, 8192)  // a hole
        .Request(NbdProtocol.CmdBlockStatus, 4, 0, 1 << 20)
        .Request(NbdProtocol.CmdTrim, 5, 0, 65536)
        .Request(NbdProtocol.CmdWriteZeroes, 6, 65536, 4096, NbdProtocol.CmdFlagNoHole)
        .Request(NbdProtocol.CmdCache, 7, 0, 4096)
        .Request(0x42, 8, 0, 0)                           // unknown command
        .Request(NbdProtocol.CmdRead, 9, 0, 512, 0x80)    // unknown flag
        .Request(NbdProtocol.CmdRead, 10, (16 << 20) - 1, 2) // past the end
        .Request(NbdProtocol.CmdWrite, 11, (16 << 20) - 1, 2, payload: [1, 2])
        .Request(NbdProtocol.CmdRead, 12, 0, 0)
        .Request(NbdProtocol.CmdDisc, 13, 0, 0)
        .ToArray();

    [Fact]
    public async Task Session_InputSplitAtEveryOffset_ProducesIdenticalReplies()
    {
        var input = FullSession();
        var reference = _vol.RunSession(input);
        Assert.True(reference.Length > 1000);
        for (var cut = 1; cut < input.Length; cut++)
        {
            // Reset the disk to the same starting state for every run.
            await _vol.Volume.Zero(0, _vol.Volume.Size, mayDeallocate: true, onlyIfFast: false, fua: false);
            var output = _vol.RunSession(input, cut);
            Assert.True(reference.AsSpan().SequenceEqual(output), $"replies differ when the input is split at byte {cut}");
        }
    }

    [Fact]
    public void Session_FullScript_RepliesAsTheSpecSays()
    {
        var written = Pattern(5000, 2);
        var r = new NbdReplyReader(_vol.RunSession(FullSession()));
        r.ExpectGreeting();

        var unsup = r.OptionReplies(0x7777);
        Assert.Equal(NbdProtocol.RepErrUnsup, Assert.Single(unsup).Type);

        var list = r.OptionReplies(NbdProtocol.OptList);
        Assert.Equal(NbdProtocol.RepServer, list[0].Type);
        Assert.Equal("vol", Encoding.UTF8.GetString(list[0].Data, 4, BinaryPrimitives.ReadInt32BigEndian(list[0].Data)));
        Assert.Equal(NbdProtocol.RepAck, list[1].Type);

        Assert.Equal(NbdProtocol.RepAck, Assert.Single(r.OptionReplies(NbdProtocol.OptStructuredReply)).Type);

        var listMeta = r.OptionReplies(NbdProtocol.OptListMetaContext);
        Assert.Equal(2, listMeta.Count);
        Assert.Equal(NbdProtocol.BaseAllocation, Encoding.UTF8.GetString(listMeta[0].Data, 4, listMeta[0].Data.Length - 4));

        var setMeta = r.OptionReplies(NbdProtocol.OptSetMetaContext);
        Assert.Equal(2, setMeta.Count); // base:allocation only; the unknown query selects nothing
        Assert.Equal(NbdProtocol.BaseAllocationContextId, BinaryPrimitives.ReadUInt32BigEndian(setMeta[0].Data));

        var info = r.OptionReplies(NbdProtocol.OptInfo);
        Assert.Contains(info, i => i.Type == NbdProtocol.RepInfo && BinaryPrimitives.ReadUInt16BigEndian(i.Data) == NbdProtocol.InfoName
            && Encoding.UTF8.GetString(i.Data, 2, i.Data.Length - 2) == "vol");
        Assert.Contains(info, i => i.Type == NbdProtocol.RepInfo && BinaryPrimitives.ReadUInt16BigEndian(i.Data) == NbdProtocol.InfoDescription);

        var go = r.OptionReplies(NbdProtocol.OptGo);
        var blockSize = go.Single(i => i.Type == NbdProtocol.RepInfo && BinaryPrimitives.ReadUInt16BigEndian(i.Data) == NbdProtocol.InfoBlockSize).Data;
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(blockSize.AsSpan(2)));
        Assert.Equal(4096u, BinaryPrimitives.ReadUInt32BigEndian(blockSize.AsSpan(6)));
        Assert.Equal(32u << 20, BinaryPrimitives.ReadUInt32BigEndian(blockSize.AsSpan(10)));
        var export = go.Single(i => i.Type == NbdProtocol.RepInfo && BinaryPrimitives.ReadUInt16BigEndian(i.Data) == NbdProtocol.InfoExport).Data;
        Assert.Equal(16UL << 20, BinaryPrimitives.ReadUInt64BigEndian(export.AsSpan(2)));
        var flags = BinaryPrimitives.ReadUInt16BigEndian(export.AsSpan(10));
        foreach (var f in new[] { NbdProtocol.FlagHasFlags, NbdProtocol.FlagSendFlush, NbdProtocol.FlagSendFua, NbdProtocol.FlagSendTrim,
                     NbdProtocol.FlagSendWriteZeroes, NbdProtocol.FlagSendDf, NbdProtocol.FlagCanMultiConn, NbdProtocol.FlagSendCache, NbdProtocol.FlagSendFastZero })
        {
            Assert.NotEqual(0, flags & f);
        }

        Assert.Equal(0, flags & NbdProtocol.FlagReadOnly);
        Assert.Equal(NbdProtocol.RepAck, go[^1].Type);

        Assert.Equal((0u, 1UL), r.SimpleReply());

        // READ of written data: one OFFSET_DATA chunk carrying exactly what was written.
        var data = r.Chunk();
        Assert.Equal((NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeOffsetData, 2UL), (data.Flags, data.Type, data.Cookie));
        Assert.Equal(4095UL, BinaryPrimitives.ReadUInt64BigEndian(data.Payload));
        Assert.Equal(written, data.Payload[8..]);

        // READ of a never-written range: an OFFSET_HOLE chunk, no data on the wire.
        var hole = r.Chunk();
        Assert.Equal((NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeOffsetHole, 3UL), (hole.Flags, hole.Type, hole.Cookie));
        Assert.Equal(1UL << 20, BinaryPrimitives.ReadUInt64BigEndian(hole.Payload));
        Assert.Equal(8192u, BinaryPrimitives.ReadUInt32BigEndian(hole.Payload.AsSpan(8)));

        // BLOCK_STATUS: hole, data around the write, hole; lengths add up to no more than asked.
        var status = r.Chunk();
        Assert.Equal((NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeBlockStatus, 4UL), (status.Flags, status.Type, status.Cookie));
        var extents = Enumerable.Range(0, (status.Payload.Length - 4) / 8)
            .Select(i => (Length: BinaryPrimitives.ReadUInt32BigEndian(status.Payload.AsSpan(4 + (8 * i))), Flags: BinaryPrimitives.ReadUInt32BigEndian(status.Payload.AsSpan(8 + (8 * i)))))
            .ToList();
        Assert.Equal(1UL << 20, extents.Aggregate(0UL, (sum, e) => sum + e.Length));
        var dataExtent = extents.Single(e => e.Flags == 0);
        Assert.True(dataExtent.Length >= 5000);

        Assert.Equal((0u, 5UL), r.SimpleReply());  // TRIM
        Assert.Equal((0u, 6UL), r.SimpleReply());  // WRITE_ZEROES
        Assert.Equal((0u, 7UL), r.SimpleReply());  // CACHE

        foreach (var (cookie, errno) in new[] { (8UL, NbdProtocol.EINVAL), (9UL, NbdProtocol.EINVAL), (10UL, NbdProtocol.EINVAL), (11UL, NbdProtocol.ENOSPC) })
        {
            var error = r.Chunk();
            Assert.Equal((NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeError, cookie), (error.Flags, error.Type, error.Cookie));
            Assert.Equal(errno, BinaryPrimitives.ReadUInt32BigEndian(error.Payload));
        }

        var none = r.Chunk(); // zero-length READ
        Assert.Equal((NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeNone, 12UL), (none.Flags, none.Type, none.Cookie));
        Assert.Equal(0, r.Remaining); // DISC has no reply
    }

    [Fact]
    public void Session_AfterTrim_ReadsZeroesAndReportsAHole()
    {
        var input = new NbdScript().ClientFlags().StructuredReply().SetMetaContext("vol", NbdProtocol.BaseAllocation).Go("vol")
            .Request(NbdProtocol.CmdWrite, 1, 0, 1 << 20, payload: Pattern(1 << 20, 3))
            .Request(NbdProtocol.CmdTrim, 2, 256 << 10, 256 << 10)
            .Request(NbdProtocol.CmdBlockStatus, 3, 256 << 10, 256 << 10, NbdProtocol.CmdFlagReqOne)
            .ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        r.OptionReplies(NbdProtocol.OptStructuredReply);
        r.OptionReplies(NbdProtocol.OptSetMetaContext);
        r.OptionReplies(NbdProtocol.OptGo);
        Assert.Equal((0u, 1UL), r.SimpleReply());
        Assert.Equal((0u, 2UL), r.SimpleReply());
        var status = r.Chunk();
        Assert.Equal(12, status.Payload.Length); // REQ_ONE: exactly one descriptor
        Assert.Equal(256u << 10, BinaryPrimitives.ReadUInt32BigEndian(status.Payload.AsSpan(4)));
        Assert.Equal(NbdProtocol.StateHole | NbdProtocol.StateZero, BinaryPrimitives.ReadUInt32BigEndian(status.Payload.AsSpan(8)));

        var back = new byte[1 << 20];
        _vol.Volume.Read(0, back);
        var expected = Pattern(1 << 20, 3);
        Array.Clear(expected, 256 << 10, 256 << 10);
        Assert.Equal(expected, back);
    }

    [Fact]
    public void Session_ExportNameWithoutNoZeroes_Sends124ZeroBytes()
    {
        var input = new NbdScript().ClientFlags(NbdProtocol.ClientFixedNewstyle).Option(NbdProtocol.OptExportName, "vol"u8).ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        Assert.Equal(16UL << 20, r.U64());
        Assert.NotEqual(0, r.U16() & NbdProtocol.FlagHasFlags);
        Assert.All(r.Bytes(124), b => Assert.Equal(0, b));
        Assert.Equal(0, r.Remaining);
    }

    [Fact]
    public void Session_ExportNameUnknown_ClosesWithoutReply()
    {
        var input = new NbdScript().ClientFlags().Option(NbdProtocol.OptExportName, "nope"u8).ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        Assert.Equal(0, r.Remaining);
    }

    [Fact]
    public void Session_GoUnknownExport_RepliesErrUnknownAndKeepsHaggling()
    {
        var input = new NbdScript().ClientFlags().Go("nope").Go("").ToArray(); // "" = the only export
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        Assert.Equal(NbdProtocol.RepErrUnknown, Assert.Single(r.OptionReplies(NbdProtocol.OptGo)).Type);
        Assert.Equal(NbdProtocol.RepAck, r.OptionReplies(NbdProtocol.OptGo)[^1].Type);
    }

    [Fact]
    public void Session_UnknownClientFlags_ClosesAfterGreeting()
    {
        var input = new NbdScript().ClientFlags(0x80000001).Go("vol").ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        Assert.Equal(0, r.Remaining);
    }

    [Fact]
    public void Session_SetMetaContextBeforeStructuredReplies_IsInvalid()
    {
        var input = new NbdScript().ClientFlags().SetMetaContext("vol", NbdProtocol.BaseAllocation).Go("vol")
            .Request(NbdProtocol.CmdBlockStatus, 1, 0, 4096).ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        Assert.Equal(NbdProtocol.RepErrInvalid, Assert.Single(r.OptionReplies(NbdProtocol.OptSetMetaContext)).Type);
        r.OptionReplies(NbdProtocol.OptGo);
        Assert.Equal((NbdProtocol.EINVAL, 1UL), r.SimpleReply()); // no context: BLOCK_STATUS is EINVAL
    }

    [Fact]
    public void Session_OversizedOption_IsSkippedAndAnsweredTooBig()
    {
        var input = new NbdScript().ClientFlags().Option(NbdProtocol.OptGo, new byte[NbdHandshake.MaxOptionLength + 1]).Go("vol").ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        Assert.Equal(NbdProtocol.RepErrTooBig, Assert.Single(r.OptionReplies(NbdProtocol.OptGo)).Type);
        Assert.Equal(NbdProtocol.RepAck, r.OptionReplies(NbdProtocol.OptGo)[^1].Type);
    }

    [Fact]
    public void Session_MalformedGo_IsInvalidAndStreamStaysInSync()
    {
        var bad = NbdScript.InfoData("vol", NbdProtocol.InfoBlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(bad, 1000); // name length beyond the option
        var input = new NbdScript().ClientFlags().Option(NbdProtocol.OptGo, bad).Option(NbdProtocol.OptAbort, []).ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        Assert.Equal(NbdProtocol.RepErrInvalid, Assert.Single(r.OptionReplies(NbdProtocol.OptGo)).Type);
        Assert.Equal(NbdProtocol.RepAck, Assert.Single(r.OptionReplies(NbdProtocol.OptAbort)).Type);
        Assert.Equal(0, r.Remaining);
    }

    [Fact]
    public void Session_SimpleRepliesRead_SendsHeaderThenData()
    {
        var payload = Pattern(300 << 10, 4); // larger than the send buffer: the direct path
        var input = new NbdScript().ClientFlags().Go("vol")
            .Request(NbdProtocol.CmdWrite, 1, 512, (uint)payload.Length, payload: payload)
            .Request(NbdProtocol.CmdRead, 2, 512, (uint)payload.Length)
            .Request(NbdProtocol.CmdRead, 3, 0, 100)
            .ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        r.OptionReplies(NbdProtocol.OptGo);
        Assert.Equal((0u, 1UL), r.SimpleReply());
        Assert.Equal((0u, 2UL), r.SimpleReply());
        Assert.Equal(payload, r.Bytes(payload.Length));
        Assert.Equal((0u, 3UL), r.SimpleReply());
        Assert.Equal(new byte[100], r.Bytes(100));
    }

    [Fact]
    public void Session_DontFragmentRead_OverHoleAndData_IsOneDataChunk()
    {
        var input = new NbdScript().ClientFlags().StructuredReply().Go("vol")
            .Request(NbdProtocol.CmdWrite, 1, 8192, 4096, payload: Pattern(4096, 5))
            .Request(NbdProtocol.CmdRead, 2, 0, 65536, NbdProtocol.CmdFlagDf)
            .Request(NbdProtocol.CmdRead, 3, 0, 1 << 20, NbdProtocol.CmdFlagDf)
            .ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        r.OptionReplies(NbdProtocol.OptStructuredReply);
        r.OptionReplies(NbdProtocol.OptGo);
        r.SimpleReply();
        var chunk = r.Chunk();
        Assert.Equal((NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeOffsetData), (chunk.Flags, chunk.Type));
        Assert.Equal(8 + 65536, chunk.Payload.Length);
        Assert.Equal(Pattern(4096, 5), chunk.Payload.AsSpan(8 + 8192, 4096).ToArray());
        var tooBig = r.Chunk();
        Assert.Equal(NbdProtocol.EOVERFLOW, BinaryPrimitives.ReadUInt32BigEndian(tooBig.Payload));
    }

    [Fact]
    public void Session_WriteOver32MiB_ClosesTheConnection()
    {
        var input = new NbdScript().ClientFlags().Go("vol")
            .Request(NbdProtocol.CmdWrite, 1, 0, (32u << 20) + 1)
            .Request(NbdProtocol.CmdRead, 2, 0, 512)
            .ToArray();
        var r = new NbdReplyReader(_vol.RunSession(input));
        r.ExpectGreeting();
        r.OptionReplies(NbdProtocol.OptGo);
        Assert.Equal(0, r.Remaining);
    }

    [Fact]
    public void Session_ReadOnlyVolume_RefusesWritesWithEperm()
    {
        using var secondary = new TempVolume(role: BlockRepl.Core.VolumeRole.Secondary);
        var input = new NbdScript().ClientFlags().Go("vol")
            .Request(NbdProtocol.CmdWrite, 1, 0, 4, payload: [1, 2, 3, 4])
            .Request(NbdProtocol.CmdTrim, 2, 0, 4096)
            .Request(NbdProtocol.CmdRead, 3, 0, 4)
            .ToArray();
        var r = new NbdReplyReader(secondary.RunSession(input));
        r.ExpectGreeting();
        var go = r.OptionReplies(NbdProtocol.OptGo);
        var export = go.Single(i => i.Type == NbdProtocol.RepInfo && BinaryPrimitives.ReadUInt16BigEndian(i.Data) == NbdProtocol.InfoExport).Data;
        Assert.NotEqual(0, BinaryPrimitives.ReadUInt16BigEndian(export.AsSpan(10)) & NbdProtocol.FlagReadOnly);
        Assert.Equal((NbdProtocol.EPERM, 1UL), r.SimpleReply());
        Assert.Equal((NbdProtocol.EPERM, 2UL), r.SimpleReply());
        Assert.Equal((0u, 3UL), r.SimpleReply());
        Assert.Equal(new byte[4], r.Bytes(4));
    }
}
