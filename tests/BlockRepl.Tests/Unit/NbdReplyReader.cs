using System.Buffers.Binary;
using BlockRepl.Nbd;

namespace BlockRepl.Tests.Unit;

/// <summary>Decodes what the server sent, for assertions.</summary>
internal sealed class NbdReplyReader(byte[] bytes)
{
    private int _pos;

    public int Remaining => bytes.Length - _pos;

    public void ExpectGreeting()
    {
        Assert.Equal(NbdProtocol.NbdMagic, U64());
        Assert.Equal(NbdProtocol.OptionMagic, U64());
        Assert.Equal(NbdProtocol.HandshakeFixedNewstyle | NbdProtocol.HandshakeNoZeroes, U16());
    }

    public (uint Option, uint Type, byte[] Data) OptionReply()
    {
        Assert.Equal(NbdProtocol.OptionReplyMagic, U64());
        var option = U32();
        var type = U32();
        var data = Bytes((int)U32());
        return (option, type, data);
    }

    /// <summary>Reads option replies up to and including the final ACK or error for one option.</summary>
    public List<(uint Type, byte[] Data)> OptionReplies(uint option)
    {
        var list = new List<(uint, byte[])>();
        while (true)
        {
            var (o, type, data) = OptionReply();
            Assert.Equal(option, o);
            list.Add((type, data));
            if (type == NbdProtocol.RepAck || (type & 0x80000000) != 0)
            {
                return list;
            }
        }
    }

    public (uint Error, ulong Cookie) SimpleReply()
    {
        Assert.Equal(NbdProtocol.SimpleReplyMagic, U32());
        return (U32(), U64());
    }

    public (ushort Flags, ushort Type, ulong Cookie, byte[] Payload) Chunk()
    {
        Assert.Equal(NbdProtocol.StructuredReplyMagic, U32());
        var flags = U16();
        var type = U16();
        var cookie = U64();
        var payload = Bytes((int)U32());
        return (flags, type, cookie, payload);
    }

    public uint PeekMagic() => BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(_pos));

    public byte[] Bytes(int n)
    {
        var b = bytes.AsSpan(_pos, n).ToArray();
        _pos += n;
        return b;
    }

    public ulong U64()
    {
        var v = BinaryPrimitives.ReadUInt64BigEndian(bytes.AsSpan(_pos));
        _pos += 8;
        return v;
    }

    public uint U32()
    {
        var v = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(_pos));
        _pos += 4;
        return v;
    }

    public ushort U16()
    {
        var v = BinaryPrimitives.ReadUInt16BigEndian(bytes.AsSpan(_pos));
        _pos += 2;
        return v;
    }
}
