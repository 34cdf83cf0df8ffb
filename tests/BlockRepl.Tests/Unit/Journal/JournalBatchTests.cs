using System.Buffers.Binary;
using BlockRepl.Core.Journal;

namespace BlockRepl.Tests.Unit.Journal;

public sealed class JournalBatchTests
{
    private const int Bound = JournalBatchWriter.MinBatchBytes;

    // Where Pack puts its third record (the flush): after a write with 16 payload bytes and a trim.
    private const int FlushOffset = JournalRecordHeader.Size + 16 + JournalRecordHeader.Size;

    private sealed record Expected(JournalRecordHeader Header, byte[] Payload);

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Batch_RandomMixedRecords_RoundTrip(int seed)
    {
        var random = new Random(seed);
        using var writer = new JournalBatchWriter(Bound);
        ulong seq = (ulong)random.Next(1, 1000);

        // Several batches through one writer: Reset must leave nothing behind.
        for (var batch = 0; batch < 5; batch++)
        {
            writer.Reset();
            var expected = new List<Expected>();
            var records = random.Next(1, 200);
            for (var i = 0; i < records; i++)
            {
                var record = RandomRecord(random, seq++);
                Assert.True(writer.TryAppend(record.Header, record.Payload));
                expected.Add(record);
            }

            Assert.Equal(expected[0].Header.Seq, writer.FirstSeq);
            Assert.Equal(records, writer.RecordCount);
            Assert.Equal(expected.Sum(r => r.Header.EncodedLength), writer.UncompressedLength);
            Assert.Equal(Crc32C.Compute(writer.Packed), writer.PackedCrc32C);

            var reader = new JournalBatchReader(writer.Packed, writer.FirstSeq, (uint)writer.RecordCount, writer.PackedCrc32C);
            Assert.Equal(expected[^1].Header.Seq, reader.LastSeq);
            var n = 0;
            while (reader.TryReadNext(out var header, out var payload))
            {
                Assert.Equal(expected[n].Header, header);
                Assert.Equal(expected[n].Payload, payload.ToArray());
                n++;
            }

            Assert.Equal(records, n);
            Assert.False(reader.TryReadNext(out _, out _));
        }
    }

    [Fact]
    public void TryAppend_RecordDoesNotFit_ReturnsFalseAndChangesNothing()
    {
        using var writer = new JournalBatchWriter(Bound);
        var big = new byte[JournalRecordHeader.MaxPayloadLength];
        Assert.True(writer.TryAppend(JournalRecordHeader.ForWrite(1, 0, 16), big.AsSpan(0, 16)));
        var crc = writer.PackedCrc32C;
        var length = writer.UncompressedLength;

        Assert.False(writer.TryAppend(JournalRecordHeader.ForWrite(2, 0, big.Length), big));

        Assert.Equal(1, writer.RecordCount);
        Assert.Equal(length, writer.UncompressedLength);
        Assert.Equal(crc, writer.PackedCrc32C);

        // Header-only records still fit until the bound is reached exactly.
        writer.Reset();
        Assert.True(writer.TryAppend(JournalRecordHeader.ForWrite(2, 0, big.Length), big));
        Assert.Equal(Bound, writer.UncompressedLength);
        Assert.Equal(0, writer.RemainingBytes);
        Assert.False(writer.TryAppend(JournalRecordHeader.ForFlush(3), default));
    }

    [Fact]
    public void TryAppend_SeqDoesNotFollow_ThrowsArgumentException()
    {
        using var writer = new JournalBatchWriter(Bound);
        Assert.True(writer.TryAppend(JournalRecordHeader.ForFlush(10), default));

        Assert.Throws<ArgumentException>(() => writer.TryAppend(JournalRecordHeader.ForFlush(12), default));
        Assert.Throws<ArgumentException>(() => writer.TryAppend(JournalRecordHeader.ForFlush(10), default));
        Assert.Equal(1, writer.RecordCount);
    }

    [Fact]
    public void TryAppend_InvalidRecord_ThrowsArgumentException()
    {
        using var writer = new JournalBatchWriter(Bound);

        Assert.Throws<ArgumentException>(() => writer.TryAppend(JournalRecordHeader.ForWrite(1, 0, 8), new byte[4]));
        Assert.Throws<ArgumentException>(() => writer.TryAppend(JournalRecordHeader.ForFlush(0), default));
        Assert.Throws<ArgumentException>(
            () => writer.TryAppend(new JournalRecordHeader(1, (JournalRecordKind)9, 0, 0, 0, 0), default));
        Assert.Equal(0, writer.RecordCount);
    }

    [Fact]
    public void Writer_BoundBelowOneLargestRecord_Throws() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new JournalBatchWriter(Bound - 1));

    [Fact]
    public void Reader_BadCrc_Throws()
    {
        var (packed, first, count, crc) = Pack(100, 5);

        var ex = Assert.Throws<JournalFormatException>(() => Read(packed, first, count, crc ^ 1));
        Assert.Contains("CRC", ex.Message);

        packed[^1] ^= 0x40; // a flipped payload bit
        Assert.Throws<JournalFormatException>(() => Read(packed, first, count, crc));
    }

    [Fact]
    public void Reader_SequenceGap_Throws()
    {
        var (packed, first, count, _) = Pack(100, 5);
        // The third record (the flush) gets seq 103 instead of 102.
        BinaryPrimitives.WriteUInt64LittleEndian(packed.AsSpan(FlushOffset), 103);

        var ex = Assert.Throws<JournalFormatException>(() => Read(packed, first, count, Crc32C.Compute(packed)));
        Assert.Contains("gap", ex.Message);
    }

    [Fact]
    public void Reader_WrongFirstSeq_Throws()
    {
        var (packed, first, count, crc) = Pack(100, 5);

        var ex = Assert.Throws<JournalFormatException>(() => Read(packed, first + 1, count, crc));
        Assert.Contains("gap", ex.Message);
    }

    [Fact]
    public void Reader_CountTooHigh_Throws()
    {
        var (packed, first, count, crc) = Pack(100, 5);

        var ex = Assert.Throws<JournalFormatException>(() => Read(packed, first, count + 1, crc));
        Assert.Contains("count mismatch", ex.Message);
    }

    [Fact]
    public void Reader_CountTooLow_Throws()
    {
        var (packed, first, count, crc) = Pack(100, 5);

        var ex = Assert.Throws<JournalFormatException>(() => Read(packed, first, count - 1, crc));
        Assert.Contains("trailing", ex.Message);
    }

    [Fact]
    public void Reader_CountZero_Throws()
    {
        var ex = Assert.Throws<JournalFormatException>(() => Read([], 1, 0, 0));
        Assert.Contains("record_count 0", ex.Message);
    }

    [Fact]
    public void Reader_TruncatedAtEveryLength_Throws()
    {
        var (packed, first, count, _) = Pack(100, 5);
        for (var length = 0; length < packed.Length; length++)
        {
            var cut = packed.AsSpan(0, length).ToArray();
            // A correct CRC over the cut bytes: the structure, not the checksum, must catch it.
            Assert.Throws<JournalFormatException>(() => Read(cut, first, count, Crc32C.Compute(cut)));
        }
    }

    [Fact]
    public void Reader_TrailingGarbage_Throws()
    {
        var (packed, first, count, _) = Pack(100, 5);
        foreach (var extra in new[] { 1, 31, 32, 100 })
        {
            var longer = packed.Concat(Enumerable.Repeat((byte)0, extra)).ToArray();
            var ex = Assert.Throws<JournalFormatException>(() => Read(longer, first, count, Crc32C.Compute(longer)));
            Assert.Contains("trailing", ex.Message);
        }
    }

    [Fact]
    public void Reader_MalformedRecordInside_Throws()
    {
        var (packed, first, count, _) = Pack(100, 5);
        packed[FlushOffset + 8] = 77; // the flush's kind

        var ex = Assert.Throws<JournalFormatException>(() => Read(packed, first, count, Crc32C.Compute(packed)));
        Assert.Contains("unknown kind 77", ex.Message);
    }

    /// <summary>Reads every record; a bad batch throws from the constructor.</summary>
    private static int Read(byte[] packed, ulong firstSeq, uint count, uint crc)
    {
        var reader = new JournalBatchReader(packed, firstSeq, count, crc);
        var n = 0;
        while (reader.TryReadNext(out _, out _))
        {
            n++;
        }

        return n;
    }

    /// <summary>
    /// A batch of <paramref name="count"/> records from <paramref name="firstSeq"/>: write (16 bytes), trim,
    /// flush, then zero and writes; the last record is a write, so the last byte is payload.
    /// </summary>
    private static (byte[] Packed, ulong FirstSeq, uint Count, uint Crc) Pack(ulong firstSeq, int count)
    {
        using var writer = new JournalBatchWriter(Bound);
        var payload = Enumerable.Range(1, 16).Select(i => (byte)i).ToArray();
        for (var i = 0; i < count; i++)
        {
            var seq = firstSeq + (ulong)i;
            var header = (i % 4) switch
            {
                1 => JournalRecordHeader.ForTrim(seq, 0, 4096),
                2 => JournalRecordHeader.ForFlush(seq),
                3 => JournalRecordHeader.ForZero(seq, 8192, 512, fua: true),
                _ => JournalRecordHeader.ForWrite(seq, (ulong)i * 4096, payload.Length),
            };
            Assert.True(writer.TryAppend(header, header.Kind == JournalRecordKind.Write ? payload : default));
        }

        return (writer.Packed.ToArray(), writer.FirstSeq, (uint)writer.RecordCount, writer.PackedCrc32C);
    }

    private static Expected RandomRecord(Random random, ulong seq)
    {
        var fua = random.Next(4) == 0;
        var offset = (ulong)random.NextInt64(0, 1L << 40);
        switch (random.Next(4))
        {
            case 0:
                var payload = new byte[random.Next(0, 3) == 0 ? random.Next(0, 64) : random.Next(0, 70_000)];
                random.NextBytes(payload);
                return new Expected(JournalRecordHeader.ForWrite(seq, offset, payload.Length, fua), payload);
            case 1:
                return new Expected(JournalRecordHeader.ForTrim(seq, offset, (ulong)random.NextInt64(0, 1L << 30), fua), []);
            case 2:
                return new Expected(JournalRecordHeader.ForZero(seq, offset, (ulong)random.NextInt64(0, 1L << 30), fua), []);
            default:
                return new Expected(JournalRecordHeader.ForFlush(seq), []);
        }
    }
}
