using BlockRepl.Nbd;

namespace BlockRepl.Tests.Unit;

public sealed class NbdParserTests
{
    [Fact]
    public void RequestHeader_EveryPrefix_IsIncompleteUntilTheLastByte()
    {
        var bytes = new byte[NbdProtocol.RequestHeaderSize];
        new NbdRequestHeader(0x1234, NbdProtocol.CmdWrite, 0xdeadbeefcafef00d, 0x0102030405060708, 0x0a0b0c0d).WriteTo(bytes);
        for (var n = 0; n < bytes.Length; n++)
        {
            Assert.False(NbdRequestHeader.TryRead(bytes.AsSpan(0, n), out _));
        }

        Assert.True(NbdRequestHeader.TryRead(bytes, out var header));
        Assert.Equal(new NbdRequestHeader(0x1234, NbdProtocol.CmdWrite, 0xdeadbeefcafef00d, 0x0102030405060708, 0x0a0b0c0d), header);
    }

    [Fact]
    public void RequestHeader_KnownBytes_DecodeBigEndian()
    {
        byte[] bytes =
        [
            0x25, 0x60, 0x95, 0x13, // magic
            0x00, 0x01,             // flags: FUA
            0x00, 0x01,             // type: WRITE
            1, 2, 3, 4, 5, 6, 7, 8, // cookie
            0, 0, 0, 0, 0, 0, 0x10, 0x00, // offset 4096
            0, 0, 0x02, 0x00,       // length 512
        ];
        Assert.True(NbdRequestHeader.TryRead(bytes, out var h));
        Assert.Equal(NbdProtocol.CmdFlagFua, h.Flags);
        Assert.Equal(NbdProtocol.CmdWrite, h.Type);
        Assert.Equal(0x0102030405060708UL, h.Cookie);
        Assert.Equal(4096UL, h.Offset);
        Assert.Equal(512U, h.Length);
    }

    [Fact]
    public void RequestHeader_BadMagic_Throws()
    {
        var bytes = new byte[NbdProtocol.RequestHeaderSize];
        new NbdRequestHeader(0, 0, 0, 0, 0).WriteTo(bytes);
        bytes[0] ^= 0xff;
        Assert.Throws<NbdProtocolException>(() => NbdRequestHeader.TryRead(bytes, out _));
    }

    [Fact]
    public void OptionHeader_EveryPrefix_IsIncompleteUntilTheLastByte()
    {
        var bytes = new NbdScript().Option(NbdProtocol.OptGo, new byte[5]).ToArray().AsSpan(0, 16).ToArray();
        for (var n = 0; n < bytes.Length; n++)
        {
            Assert.False(NbdOptionHeader.TryRead(bytes.AsSpan(0, n), out _));
        }

        Assert.True(NbdOptionHeader.TryRead(bytes, out var header));
        Assert.Equal(new NbdOptionHeader(NbdProtocol.OptGo, 5), header);
    }

    [Fact]
    public void OptionHeader_BadMagic_Throws()
    {
        var bytes = new NbdScript().Option(NbdProtocol.OptGo, []).ToArray();
        bytes[7] ^= 1;
        Assert.Throws<NbdProtocolException>(() => NbdOptionHeader.TryRead(bytes, out _));
    }

    [Fact]
    public void MetaContextData_EveryTruncation_IsRejectedNotThrown()
    {
        var data = NbdScript.MetaData("vol", "base:allocation", "qemu:dirty-bitmap:x");
        for (var n = 0; n < data.Length; n++)
        {
            Assert.False(NbdHandshake.TryParseMetaContext(data.AsSpan(0, n), out _, out _, out var error));
            Assert.NotEmpty(error);
        }

        Assert.True(NbdHandshake.TryParseMetaContext(data, out var export, out var queries, out _));
        Assert.Equal("vol", export);
        Assert.Equal(["base:allocation", "qemu:dirty-bitmap:x"], queries);
    }

    [Fact]
    public void MetaContextData_TrailingBytes_AreRejected()
    {
        var data = NbdScript.MetaData("vol", "base:allocation").Concat(new byte[] { 0 }).ToArray();
        Assert.False(NbdHandshake.TryParseMetaContext(data, out _, out _, out var error));
        Assert.Contains("trailing", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(new byte[] { 0x61, 0x00, 0x62 })] // NUL inside
    [InlineData(new byte[] { 0xc3, 0x28 })]       // invalid UTF-8
    public void StringDecode_NulOrInvalidUtf8_IsRejected(byte[] bytes) => Assert.False(NbdHandshake.TryDecode(bytes, out _));

    [Fact]
    public void StringDecode_Over4096Bytes_IsRejected() => Assert.False(NbdHandshake.TryDecode(new byte[4097].Select(_ => (byte)'a').ToArray(), out _));
}
