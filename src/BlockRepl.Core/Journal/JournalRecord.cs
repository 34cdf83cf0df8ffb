using System.Buffers.Binary;

namespace BlockRepl.Core.Journal;

/// <summary>
/// The fixed header of one journal record, as packed into a replication batch (replication.proto, the comment
/// above <c>message Batch</c>). Every multi-byte field is little-endian:
/// <code>
///   offset size field
///   0      8    seq            first_seq, first_seq + 1, ... in order
///   8      1    kind           1 write, 2 trim, 3 zero range, 4 flush (a barrier)
///   9      1    flags          bit 0: FUA (durable before the ack counts it)
///   10     2    reserved       0
///   12     4    payload_length bytes that follow the header (writes only; 0 otherwise)
///   16     8    offset         byte offset in the volume (0 for flush)
///   24     8    length         bytes affected (payload_length for writes, 0 for flush)
///   32     ...  payload
///
///   0       7 8    9    10   12             16             24             32
///   +-------+----+----+----+--------------+--------------+--------------+---------...
///   | seq   |kind|flag|rsvd|payload_length| offset       | length       | payload
///   +-------+----+----+----+--------------+--------------+--------------+---------...
/// </code>
/// Where the proto comment leaves a choice, this codec decides (and rejects anything else as malformed):
/// reserved must be 0; flag bits other than FUA must be 0; a write's length equals its payload_length;
/// trim, zero and flush carry no payload; a flush has offset 0 and length 0; offset + length must not
/// overflow 64 bits; payload_length is at most <see cref="MaxPayloadLength"/> (32 MiB, the NBD front end's
/// largest request), checked on the header alone, before any payload is buffered.
/// </summary>
internal readonly record struct JournalRecordHeader(
    ulong Seq,
    JournalRecordKind Kind,
    JournalRecordFlags Flags,
    uint PayloadLength,
    ulong Offset,
    ulong Length)
{
    /// <summary>Bytes of the fixed header.</summary>
    public const int Size = 32;

    /// <summary>The largest payload a record may carry (32 MiB, equal to the NBD front end's largest write).</summary>
    public const int MaxPayloadLength = 32 * 1024 * 1024;

    /// <summary>The largest encoded record: header plus the largest payload.</summary>
    public const int MaxEncodedLength = Size + MaxPayloadLength;

    /// <summary>Header plus payload: the bytes this record takes in a batch.</summary>
    public int EncodedLength => Size + (int)PayloadLength;

    public bool IsFua => (Flags & JournalRecordFlags.Fua) != 0;

    public static JournalRecordHeader ForWrite(ulong seq, ulong offset, int payloadLength, bool fua = false) =>
        new(seq, JournalRecordKind.Write, FlagsFor(fua), (uint)payloadLength, offset, (ulong)payloadLength);

    public static JournalRecordHeader ForTrim(ulong seq, ulong offset, ulong length, bool fua = false) =>
        new(seq, JournalRecordKind.Trim, FlagsFor(fua), 0, offset, length);

    public static JournalRecordHeader ForZero(ulong seq, ulong offset, ulong length, bool fua = false) =>
        new(seq, JournalRecordKind.Zero, FlagsFor(fua), 0, offset, length);

    public static JournalRecordHeader ForFlush(ulong seq) =>
        new(seq, JournalRecordKind.Flush, JournalRecordFlags.None, 0, 0, 0);

    /// <summary>
    /// Parses one record from the start of <paramref name="source"/>. Returns false when the header or the
    /// payload is not complete yet (nothing is consumed); throws <see cref="JournalFormatException"/> as soon
    /// as the header is complete and malformed, even if the payload has not arrived. On success
    /// <paramref name="payload"/> is a slice of <paramref name="source"/> (empty for non-writes) and
    /// <paramref name="consumed"/> is header plus payload.
    /// </summary>
    public static bool TryRead(
        ReadOnlySpan<byte> source,
        out JournalRecordHeader header,
        out ReadOnlySpan<byte> payload,
        out int consumed)
    {
        payload = default;
        consumed = 0;
        if (source.Length < Size)
        {
            header = default;
            return false;
        }

        var reserved = BinaryPrimitives.ReadUInt16LittleEndian(source[10..]);
        header = new JournalRecordHeader(
            Seq: BinaryPrimitives.ReadUInt64LittleEndian(source),
            Kind: (JournalRecordKind)source[8],
            Flags: (JournalRecordFlags)source[9],
            PayloadLength: BinaryPrimitives.ReadUInt32LittleEndian(source[12..]),
            Offset: BinaryPrimitives.ReadUInt64LittleEndian(source[16..]),
            Length: BinaryPrimitives.ReadUInt64LittleEndian(source[24..]));

        if (reserved != 0)
        {
            JournalFormatException.Throw($"journal record seq {header.Seq}: reserved field is 0x{reserved:x4}, not 0");
        }

        if (header.Problem() is { } problem)
        {
            JournalFormatException.Throw($"journal record seq {header.Seq}: {problem}");
        }

        // PayloadLength is now at most MaxPayloadLength, so the sum cannot overflow an int.
        var total = Size + (int)header.PayloadLength;
        if (source.Length < total)
        {
            header = default;
            return false;
        }

        payload = source.Slice(Size, (int)header.PayloadLength);
        consumed = total;
        return true;
    }

    /// <summary>Writes the 32-byte header (not the payload) to the start of <paramref name="destination"/>.</summary>
    public void Write(Span<byte> destination)
    {
        // One bounds check up front instead of one per field.
        destination = destination[..Size];
        BinaryPrimitives.WriteUInt64LittleEndian(destination, Seq);
        destination[8] = (byte)Kind;
        destination[9] = (byte)Flags;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[10..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[12..], PayloadLength);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[16..], Offset);
        BinaryPrimitives.WriteUInt64LittleEndian(destination[24..], Length);
    }

    /// <summary>
    /// What is wrong with this header by the rules above, or null when it is well formed. The decoder turns a
    /// problem into <see cref="JournalFormatException"/>; the batch writer into an argument error (a sender
    /// bug must not reach the wire). Returns a string only on failure, so the good path allocates nothing.
    /// </summary>
    public string? Problem()
    {
        if ((Flags & ~JournalRecordFlags.Fua) != 0)
        {
            return $"unknown flags 0x{(byte)Flags:x2}";
        }

        if (PayloadLength > MaxPayloadLength)
        {
            return $"payload_length {PayloadLength} exceeds the bound of {MaxPayloadLength}";
        }

        if (Offset > ulong.MaxValue - Length)
        {
            return $"range offset {Offset} length {Length} overflows";
        }

        switch (Kind)
        {
            case JournalRecordKind.Write:
                return Length == PayloadLength
                    ? null
                    : $"write length {Length} differs from payload_length {PayloadLength}";
            case JournalRecordKind.Trim:
            case JournalRecordKind.Zero:
                return PayloadLength == 0 ? null : $"{Kind} carries a payload of {PayloadLength} bytes";
            case JournalRecordKind.Flush:
                if (PayloadLength != 0)
                {
                    return $"flush carries a payload of {PayloadLength} bytes";
                }

                return Offset == 0 && Length == 0 ? null : $"flush has offset {Offset} length {Length}, not 0 and 0";
            default:
                return $"unknown kind {(byte)Kind}";
        }
    }

    private static JournalRecordFlags FlagsFor(bool fua) => fua ? JournalRecordFlags.Fua : JournalRecordFlags.None;
}
