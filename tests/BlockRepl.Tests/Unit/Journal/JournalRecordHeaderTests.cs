using System.Buffers.Binary;
using BlockRepl.Core.Journal;

namespace BlockRepl.Tests.Unit.Journal;

public sealed class JournalRecordHeaderTests
{
    public static TheoryData<int> Kinds => new() { 1, 2, 3, 4 };

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Header_RoundTrip_PreservesEveryField(int kind)
    {
        var header = (JournalRecordKind)kind switch
        {
            JournalRecordKind.Write => JournalRecordHeader.ForWrite(0x0102030405060708, 0x1122334455667788, 512, fua: true),
            JournalRecordKind.Trim => JournalRecordHeader.ForTrim(7, 1 << 20, 1UL << 33, fua: true),
            JournalRecordKind.Zero => JournalRecordHeader.ForZero(ulong.MaxValue, 4096, 65536),
            _ => JournalRecordHeader.ForFlush(42),
        };
        var bytes = new byte[header.EncodedLength];
        header.Write(bytes);

        Assert.True(JournalRecordHeader.TryRead(bytes, out var read, out var payload, out var consumed));
        Assert.Equal(header, read);
        Assert.Equal(bytes.Length, consumed);
        Assert.Equal((int)header.PayloadLength, payload.Length);
    }

    [Fact]
    public void Header_KnownBytes_DecodeLittleEndian()
    {
        byte[] bytes =
        [
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // seq
            0x01,                                           // kind: write
            0x01,                                           // flags: FUA
            0x00, 0x00,                                     // reserved
            0x04, 0x00, 0x00, 0x00,                         // payload_length 4
            0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 4096
            0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // length 4
            0xde, 0xad, 0xbe, 0xef,                         // payload
        ];

        Assert.True(JournalRecordHeader.TryRead(bytes, out var h, out var payload, out var consumed));
        Assert.Equal(JournalRecordHeader.ForWrite(0x0102030405060708, 4096, 4, fua: true), h);
        Assert.True(h.IsFua);
        Assert.Equal(new byte[] { 0xde, 0xad, 0xbe, 0xef }, payload.ToArray());
        Assert.Equal(36, consumed);

        var encoded = new byte[JournalRecordHeader.Size];
        h.Write(encoded);
        Assert.Equal(bytes.AsSpan(0, JournalRecordHeader.Size).ToArray(), encoded);
    }

    [Fact]
    public void TryRead_EveryPrefix_IsIncompleteUntilTheLastByte()
    {
        var header = JournalRecordHeader.ForWrite(9, 8192, 100);
        var bytes = new byte[header.EncodedLength + 5];
        header.Write(bytes);
        for (var i = 0; i < 100; i++)
        {
            bytes[JournalRecordHeader.Size + i] = (byte)(i * 7);
        }

        for (var n = 0; n < header.EncodedLength; n++)
        {
            Assert.False(JournalRecordHeader.TryRead(bytes.AsSpan(0, n), out _, out _, out var consumed));
            Assert.Equal(0, consumed);
        }

        // Complete, and then with bytes of the next record after it: only this record is consumed.
        foreach (var length in new[] { header.EncodedLength, bytes.Length })
        {
            Assert.True(JournalRecordHeader.TryRead(bytes.AsSpan(0, length), out var read, out var payload, out var consumed));
            Assert.Equal(header, read);
            Assert.Equal(header.EncodedLength, consumed);
            Assert.Equal(bytes.AsSpan(JournalRecordHeader.Size, 100).ToArray(), payload.ToArray());
        }
    }

    [Fact]
    public void TryRead_FlushWithoutPayload_ConsumesHeaderOnly()
    {
        var bytes = new byte[JournalRecordHeader.Size];
        JournalRecordHeader.ForFlush(3).Write(bytes);

        Assert.True(JournalRecordHeader.TryRead(bytes, out var h, out var payload, out var consumed));
        Assert.Equal(JournalRecordKind.Flush, h.Kind);
        Assert.True(payload.IsEmpty);
        Assert.Equal(JournalRecordHeader.Size, consumed);
    }

    // Each case patches one field of a valid 4-byte write (or of a flush) into something malformed.
    public static TheoryData<string> MalformedCases => new()
    {
        "kind 0", "kind 5", "kind 255",
        "trim with payload", "zero with payload", "flush with payload",
        "write length differs from payload", "flush with offset", "flush with length",
        "payload over the bound", "payload length 0xffffffff",
        "reserved not zero", "unknown flag", "range overflows",
    };

    [Theory]
    [MemberData(nameof(MalformedCases))]
    public void TryRead_MalformedHeader_Throws(string malformed)
    {
        var bytes = new byte[JournalRecordHeader.Size + 4];
        JournalRecordHeader.ForWrite(5, 4096, 4).Write(bytes);
        var h = bytes.AsSpan();
        switch (malformed)
        {
            case "kind 0": h[8] = 0; break;
            case "kind 5": h[8] = 5; break;
            case "kind 255": h[8] = 255; break;
            case "trim with payload": h[8] = (byte)JournalRecordKind.Trim; break;
            case "zero with payload": h[8] = (byte)JournalRecordKind.Zero; break;
            case "flush with payload": JournalRecordHeader.ForFlush(5).Write(h); BinaryPrimitives.WriteUInt32LittleEndian(h[12..], 4); break;
            case "write length differs from payload": BinaryPrimitives.WriteUInt64LittleEndian(h[24..], 8); break;
            case "flush with offset": JournalRecordHeader.ForFlush(5).Write(h); BinaryPrimitives.WriteUInt64LittleEndian(h[16..], 1); break;
            case "flush with length": JournalRecordHeader.ForFlush(5).Write(h); BinaryPrimitives.WriteUInt64LittleEndian(h[24..], 1); break;
            case "payload over the bound":
                BinaryPrimitives.WriteUInt32LittleEndian(h[12..], JournalRecordHeader.MaxPayloadLength + 1);
                BinaryPrimitives.WriteUInt64LittleEndian(h[24..], JournalRecordHeader.MaxPayloadLength + 1);
                break;
            case "payload length 0xffffffff":
                BinaryPrimitives.WriteUInt32LittleEndian(h[12..], uint.MaxValue);
                BinaryPrimitives.WriteUInt64LittleEndian(h[24..], uint.MaxValue);
                break;
            case "reserved not zero": h[11] = 1; break;
            case "unknown flag": h[9] = 0x02; break;
            case "range overflows": JournalRecordHeader.ForTrim(5, ulong.MaxValue - 10, 11).Write(h); break;
            default: throw new ArgumentOutOfRangeException(nameof(malformed));
        }

        // Malformed is detected from the header alone: with or without the payload bytes present.
        Assert.Throws<JournalFormatException>(() => JournalRecordHeader.TryRead(bytes, out _, out _, out _));
        Assert.Throws<JournalFormatException>(
            () => JournalRecordHeader.TryRead(bytes.AsSpan(0, JournalRecordHeader.Size), out _, out _, out _));
    }

    [Fact]
    public void TryRead_MalformedButIncompleteHeader_ReturnsFalse()
    {
        var bytes = new byte[JournalRecordHeader.Size];
        JournalRecordHeader.ForWrite(5, 0, 4).Write(bytes);
        bytes[8] = 99;

        Assert.False(JournalRecordHeader.TryRead(bytes.AsSpan(0, JournalRecordHeader.Size - 1), out _, out _, out _));
    }

    [Fact]
    public void TryRead_LargestPayload_IsAccepted()
    {
        var header = JournalRecordHeader.ForWrite(1, 0, JournalRecordHeader.MaxPayloadLength);
        var bytes = new byte[JournalRecordHeader.Size];
        header.Write(bytes);

        // Header alone: incomplete, not malformed.
        Assert.False(JournalRecordHeader.TryRead(bytes, out _, out _, out _));
        Assert.Null(header.Problem());
    }
}
