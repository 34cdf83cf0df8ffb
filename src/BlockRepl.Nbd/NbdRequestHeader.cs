using System.Buffers.Binary;

namespace BlockRepl.Nbd;

/// <summary>
/// A transmission-phase request header.
/// <code>
///  C: 32 bits, 0x25609513, magic (NBD_REQUEST_MAGIC)
///  C: 16 bits, command flags
///  C: 16 bits, type
///  C: 64 bits, cookie
///  C: 64 bits, offset (unsigned)
///  C: 32 bits, length (unsigned)
///  C: (length bytes of data if the request is of type NBD_CMD_WRITE)
/// </code>
/// </summary>
internal readonly record struct NbdRequestHeader(ushort Flags, ushort Type, ulong Cookie, ulong Offset, uint Length)
{
    /// <summary>
    /// Parses a header from the start of <paramref name="buffer"/>. Returns false when fewer than 28 bytes
    /// are there; throws <see cref="NbdProtocolException"/> on a bad magic (the stream is then unusable).
    /// </summary>
    public static bool TryRead(ReadOnlySpan<byte> buffer, out NbdRequestHeader header)
    {
        if (buffer.Length < NbdProtocol.RequestHeaderSize)
        {
            header = default;
            return false;
        }

        var magic = BinaryPrimitives.ReadUInt32BigEndian(buffer);
        if (magic != NbdProtocol.RequestMagic)
        {
            NbdProtocolException.Throw($"bad request magic 0x{magic:x8}");
        }

        header = new NbdRequestHeader(
            Flags: BinaryPrimitives.ReadUInt16BigEndian(buffer[4..]),
            Type: BinaryPrimitives.ReadUInt16BigEndian(buffer[6..]),
            Cookie: BinaryPrimitives.ReadUInt64BigEndian(buffer[8..]),
            Offset: BinaryPrimitives.ReadUInt64BigEndian(buffer[16..]),
            Length: BinaryPrimitives.ReadUInt32BigEndian(buffer[24..]));
        return true;
    }

    public void WriteTo(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdProtocol.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], Flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], Type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], Cookie);
        BinaryPrimitives.WriteUInt64BigEndian(destination[16..], Offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[24..], Length);
    }
}
