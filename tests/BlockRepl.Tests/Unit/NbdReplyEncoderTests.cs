using BlockRepl.Nbd;

namespace BlockRepl.Tests.Unit;

public sealed class NbdReplyEncoderTests
{
    [Fact]
    public void SimpleReply_Bytes_MatchTheSpecLayout()
    {
        var b = new byte[16];
        Assert.Equal(16, NbdReplyEncoder.SimpleReply(b, NbdProtocol.EINVAL, 0x1122334455667788));
        Assert.Equal(new byte[] { 0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88 }, b);
    }

    [Fact]
    public void OffsetHole_Bytes_MatchTheSpecLayout()
    {
        var b = new byte[32];
        Assert.Equal(32, NbdReplyEncoder.OffsetHole(b, done: true, cookie: 7, offset: 0x1000, holeSize: 0x20000));
        Assert.Equal(new byte[]
        {
            0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 12,
            0, 0, 0, 0, 0, 0, 0x10, 0, 0, 2, 0, 0,
        }, b);
    }

    [Fact]
    public void OffsetDataHeader_Bytes_CountTheOffsetInTheLength()
    {
        var b = new byte[28];
        Assert.Equal(28, NbdReplyEncoder.OffsetDataHeader(b, done: false, cookie: 1, offset: 512, dataLength: 4096));
        Assert.Equal(new byte[]
        {
            0x66, 0x8e, 0x33, 0xef, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0x10, 0x08,
            0, 0, 0, 0, 0, 0, 2, 0,
        }, b);
    }

    [Fact]
    public void ErrorChunk_WithMessage_HasDoneFlagAndLengths()
    {
        var b = new byte[NbdReplyEncoder.MaxErrorChunkSize];
        var n = NbdReplyEncoder.ErrorChunk(b, 9, NbdProtocol.EIO, "bad");
        Assert.Equal(20 + 6 + 3, n);
        Assert.Equal(new byte[]
        {
            0x66, 0x8e, 0x33, 0xef, 0, 1, 0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 9,
            0, 0, 0, 5, 0, 3, (byte)'b', (byte)'a', (byte)'d',
        }, b.AsSpan(0, n).ToArray());
    }

    [Fact]
    public void ErrorOffsetChunk_AppendsTheOffsetAfterTheMessage()
    {
        var b = new byte[NbdReplyEncoder.MaxErrorChunkSize];
        var n = NbdReplyEncoder.ErrorChunk(b, 9, NbdProtocol.EIO, "", offset: 0x200);
        Assert.Equal(20 + 6 + 8, n);
        Assert.Equal(new byte[] { 0x80, 0x02 }, b.AsSpan(6, 2).ToArray());
        Assert.Equal(new byte[] { 0, 0, 0, 14 }, b.AsSpan(16, 4).ToArray());
        Assert.Equal(new byte[] { 0, 0, 0, 0, 0, 0, 2, 0 }, b.AsSpan(26, 8).ToArray());
    }

    [Fact]
    public void ErrorChunk_LongMessage_IsTruncatedToBound()
    {
        var b = new byte[NbdReplyEncoder.MaxErrorChunkSize + 2048];
        var n = NbdReplyEncoder.ErrorChunk(b, 1, NbdProtocol.EIO, new string('é', 1000));
        Assert.True(n <= NbdReplyEncoder.MaxErrorChunkSize);
        var messageLength = (b[24] << 8) | b[25];
        Assert.Equal(n - 26, messageLength);
        Assert.Equal(0, messageLength % 2); // never cuts a 2-byte character in half
    }

    [Fact]
    public void BlockStatus_HeaderAndDescriptors_MatchTheSpecLayout()
    {
        var b = new byte[40];
        var n = NbdReplyEncoder.BlockStatusHeader(b, 3, 1, 2);
        n += NbdReplyEncoder.BlockStatusDescriptor(b.AsSpan(n), 4096, 0);
        n += NbdReplyEncoder.BlockStatusDescriptor(b.AsSpan(n), 8192, 3);
        Assert.Equal(40, n);
        Assert.Equal(new byte[]
        {
            0x66, 0x8e, 0x33, 0xef, 0, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 20,
            0, 0, 0, 1, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 3,
        }, b);
    }

    [Fact]
    public void OptionReplyAndInfo_Bytes_MatchTheSpecLayout()
    {
        var b = new byte[34];
        var n = NbdReplyEncoder.OptionReplyHeader(b, NbdProtocol.OptGo, NbdProtocol.RepInfo, 14);
        n += NbdReplyEncoder.InfoBlockSize(b.AsSpan(n), 1, 4096, 1 << 25);
        Assert.Equal(34, n);
        Assert.Equal(new byte[]
        {
            0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 14,
            0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 2, 0, 0, 0,
        }, b);
    }
}
