using System.Buffers.Binary;
using System.Text;
using BlockRepl.Nbd;

namespace BlockRepl.Tests.Unit;

/// <summary>Builds the bytes a client sends: handshake options and transmission requests.</summary>
internal sealed class NbdScript
{
    private readonly MemoryStream _bytes = new();

    public NbdScript ClientFlags(uint flags = NbdProtocol.ClientFixedNewstyle | NbdProtocol.ClientNoZeroes)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, flags);
        _bytes.Write(b);
        return this;
    }

    public NbdScript Option(uint option, ReadOnlySpan<byte> data)
    {
        Span<byte> b = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(b, NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(b[8..], option);
        BinaryPrimitives.WriteUInt32BigEndian(b[12..], (uint)data.Length);
        _bytes.Write(b);
        _bytes.Write(data);
        return this;
    }

    public NbdScript Go(string export, params ushort[] infos) => Option(NbdProtocol.OptGo, InfoData(export, infos));

    public NbdScript Info(string export, params ushort[] infos) => Option(NbdProtocol.OptInfo, InfoData(export, infos));

    public NbdScript StructuredReply() => Option(NbdProtocol.OptStructuredReply, []);

    public NbdScript SetMetaContext(string export, params string[] queries) => Option(NbdProtocol.OptSetMetaContext, MetaData(export, queries));

    public NbdScript ListMetaContext(string export, params string[] queries) => Option(NbdProtocol.OptListMetaContext, MetaData(export, queries));

    public NbdScript Request(ushort type, ulong cookie, ulong offset, uint length, ushort flags = 0, byte[]? payload = null)
    {
        Span<byte> b = stackalloc byte[NbdProtocol.RequestHeaderSize];
        new NbdRequestHeader(flags, type, cookie, offset, length).WriteTo(b);
        _bytes.Write(b);
        if (payload is not null)
        {
            _bytes.Write(payload);
        }

        return this;
    }

    public byte[] ToArray() => _bytes.ToArray();

    public static byte[] InfoData(string export, params ushort[] infos)
    {
        var name = Encoding.UTF8.GetBytes(export);
        var data = new byte[4 + name.Length + 2 + (2 * infos.Length)];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(4 + name.Length), (ushort)infos.Length);
        for (var i = 0; i < infos.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(data.AsSpan(6 + name.Length + (2 * i)), infos[i]);
        }

        return data;
    }

    public static byte[] MetaData(string export, params string[] queries)
    {
        var ms = new MemoryStream();
        Span<byte> n = stackalloc byte[4];
        var name = Encoding.UTF8.GetBytes(export);
        BinaryPrimitives.WriteUInt32BigEndian(n, (uint)name.Length);
        ms.Write(n);
        ms.Write(name);
        BinaryPrimitives.WriteUInt32BigEndian(n, (uint)queries.Length);
        ms.Write(n);
        foreach (var q in queries)
        {
            var qb = Encoding.UTF8.GetBytes(q);
            BinaryPrimitives.WriteUInt32BigEndian(n, (uint)qb.Length);
            ms.Write(n);
            ms.Write(qb);
        }

        return ms.ToArray();
    }
}
