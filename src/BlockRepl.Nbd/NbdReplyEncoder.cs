using System.Buffers.Binary;
using System.Text;

namespace BlockRepl.Nbd;

/// <summary>Encoders for every reply the server sends. Each writes into a span and returns the bytes written.</summary>
internal static class NbdReplyEncoder
{
    /// <summary>
    /// <code>
    ///  S: 32 bits, 0x67446698, magic (NBD_SIMPLE_REPLY_MAGIC)
    ///  S: 32 bits, error (MAY be zero)
    ///  S: 64 bits, cookie
    ///  S: (length bytes of data if the request is of type NBD_CMD_READ and error is zero)
    /// </code>
    /// </summary>
    public static int SimpleReply(Span<byte> destination, uint error, ulong cookie)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdProtocol.SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], error);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        return NbdProtocol.SimpleReplyHeaderSize;
    }

    /// <summary>
    /// <code>
    ///  S: 32 bits, 0x668e33ef, magic (NBD_STRUCTURED_REPLY_MAGIC)
    ///  S: 16 bits, flags
    ///  S: 16 bits, type
    ///  S: 64 bits, cookie
    ///  S: 32 bits, length of payload (unsigned)
    /// </code>
    /// </summary>
    public static int ChunkHeader(Span<byte> destination, ushort flags, ushort type, ulong cookie, uint payloadLength)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, NbdProtocol.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(destination[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(destination[6..], type);
        BinaryPrimitives.WriteUInt64BigEndian(destination[8..], cookie);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], payloadLength);
        return NbdProtocol.ChunkHeaderSize;
    }

    /// <summary>OFFSET_DATA header plus its 64-bit offset; the caller places <paramref name="dataLength"/> bytes after it.</summary>
    public static int OffsetDataHeader(Span<byte> destination, bool done, ulong cookie, ulong offset, int dataLength)
    {
        var n = ChunkHeader(destination, done ? NbdProtocol.ReplyFlagDone : (ushort)0, NbdProtocol.ReplyTypeOffsetData, cookie, (uint)(8 + dataLength));
        BinaryPrimitives.WriteUInt64BigEndian(destination[n..], offset);
        return n + 8;
    }

    public static int OffsetHole(Span<byte> destination, bool done, ulong cookie, ulong offset, uint holeSize)
    {
        var n = ChunkHeader(destination, done ? NbdProtocol.ReplyFlagDone : (ushort)0, NbdProtocol.ReplyTypeOffsetHole, cookie, 12);
        BinaryPrimitives.WriteUInt64BigEndian(destination[n..], offset);
        BinaryPrimitives.WriteUInt32BigEndian(destination[(n + 8)..], holeSize);
        return n + 12;
    }

    public static int None(Span<byte> destination, ulong cookie) =>
        ChunkHeader(destination, NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeNone, cookie, 0);

    /// <summary>Upper bound of an error chunk's size, for buffer planning.</summary>
    public const int MaxErrorChunkSize = NbdProtocol.ChunkHeaderSize + 6 + MaxErrorMessage + 8;

    private const int MaxErrorMessage = 256;

    /// <summary>
    /// NBD_REPLY_TYPE_ERROR (or ERROR_OFFSET when <paramref name="offset"/> is given), always with DONE:
    /// <code>
    ///  32 bits: error (MUST be nonzero)
    ///  16 bits: message length
    ///  message length bytes: message
    ///  [64 bits: offset, for ERROR_OFFSET]
    /// </code>
    /// </summary>
    public static int ErrorChunk(Span<byte> destination, ulong cookie, uint error, string message, ulong? offset = null)
    {
        var body = destination[NbdProtocol.ChunkHeaderSize..];
        if (message.Length > MaxErrorMessage)
        {
            message = message[..MaxErrorMessage];
        }

        var messageBytes = Encoding.UTF8.GetBytes(message, body[6..]);
        if (messageBytes > MaxErrorMessage)
        {
            messageBytes = Utf8Truncate(body.Slice(6, messageBytes), MaxErrorMessage);
        }

        BinaryPrimitives.WriteUInt32BigEndian(body, error);
        BinaryPrimitives.WriteUInt16BigEndian(body[4..], (ushort)messageBytes);
        var payload = 6 + messageBytes;
        if (offset is { } at)
        {
            BinaryPrimitives.WriteUInt64BigEndian(body[payload..], at);
            payload += 8;
        }

        ChunkHeader(destination, NbdProtocol.ReplyFlagDone,
            offset is null ? NbdProtocol.ReplyTypeError : NbdProtocol.ReplyTypeErrorOffset, cookie, (uint)payload);
        return NbdProtocol.ChunkHeaderSize + payload;
    }

    /// <summary>
    /// BLOCK_STATUS chunk header for <paramref name="descriptors"/> extents; the caller appends them with
    /// <see cref="BlockStatusDescriptor"/>.
    /// </summary>
    public static int BlockStatusHeader(Span<byte> destination, ulong cookie, uint contextId, int descriptors)
    {
        var n = ChunkHeader(destination, NbdProtocol.ReplyFlagDone, NbdProtocol.ReplyTypeBlockStatus, cookie, (uint)(4 + (8 * descriptors)));
        BinaryPrimitives.WriteUInt32BigEndian(destination[n..], contextId);
        return n + 4;
    }

    public static int BlockStatusDescriptor(Span<byte> destination, uint length, uint flags)
    {
        BinaryPrimitives.WriteUInt32BigEndian(destination, length);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], flags);
        return 8;
    }

    /// <summary>
    /// <code>
    ///  S: 64 bits, 0x3e889045565a9 (reply magic)
    ///  S: 32 bits, the option as sent by the client
    ///  S: 32 bits, reply type
    ///  S: 32 bits, length of the reply
    /// </code>
    /// </summary>
    public static int OptionReplyHeader(Span<byte> destination, uint option, uint replyType, uint length)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, NbdProtocol.OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], option);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..], replyType);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], length);
        return NbdProtocol.OptionReplyHeaderSize;
    }

    /// <summary>NBD_INFO_EXPORT: 16 bits type 0, 64 bits size, 16 bits transmission flags.</summary>
    public static int InfoExport(Span<byte> destination, ulong size, ushort transmissionFlags)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination, NbdProtocol.InfoExport);
        BinaryPrimitives.WriteUInt64BigEndian(destination[2..], size);
        BinaryPrimitives.WriteUInt16BigEndian(destination[10..], transmissionFlags);
        return 12;
    }

    /// <summary>NBD_INFO_BLOCK_SIZE: 16 bits type 3, then minimum, preferred and maximum block size (32 bits each).</summary>
    public static int InfoBlockSize(Span<byte> destination, uint minimum, uint preferred, uint maximum)
    {
        BinaryPrimitives.WriteUInt16BigEndian(destination, NbdProtocol.InfoBlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(destination[2..], minimum);
        BinaryPrimitives.WriteUInt32BigEndian(destination[6..], preferred);
        BinaryPrimitives.WriteUInt32BigEndian(destination[10..], maximum);
        return 14;
    }

    private static int Utf8Truncate(ReadOnlySpan<byte> utf8, int max)
    {
        // Back off to a character boundary: continuation bytes are 10xxxxxx.
        var n = max;
        while (n > 0 && (utf8[n] & 0xC0) == 0x80)
        {
            n--;
        }

        return n;
    }
}
