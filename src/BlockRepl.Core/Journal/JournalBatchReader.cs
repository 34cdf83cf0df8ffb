namespace BlockRepl.Core.Journal;

/// <summary>
/// Reads the records of one decompressed replication batch (the receiving side, before the ReplicaApplier
/// applies them). The constructor checks the whole batch first, so a batch is either rejected whole or read
/// whole, and no record of a bad batch is ever applied:
/// <list type="number">
/// <item>the CRC32C of the bytes equals <c>Batch.crc32c</c> ("bad CRC": DATA_LOSS);</item>
/// <item>walking the headers (payloads are skipped, not copied), record i has seq first_seq + i ("gap");</item>
/// <item>exactly <c>record_count</c> records fill the bytes exactly ("count mismatch", "truncated",
/// "trailing bytes").</item>
/// </list>
/// Any violation throws <see cref="JournalFormatException"/>. Reading then allocates nothing: payloads are
/// slices of the caller's buffer, valid as long as it is. Usage:
/// <code>
/// var reader = new JournalBatchReader(bytes, batch.FirstSeq, batch.RecordCount, batch.Crc32C);
/// while (reader.TryReadNext(out var header, out var payload)) { ... }
/// </code>
/// </summary>
internal ref struct JournalBatchReader
{
    private ReadOnlySpan<byte> _remaining;
    private uint _read;

    public JournalBatchReader(ReadOnlySpan<byte> packed, ulong firstSeq, uint recordCount, uint crc32c)
    {
        if (recordCount == 0)
        {
            JournalFormatException.Throw($"batch at seq {firstSeq} has record_count 0 (at least 1 is required)");
        }

        if (firstSeq == 0 || firstSeq > ulong.MaxValue - recordCount + 1)
        {
            JournalFormatException.Throw($"batch first_seq {firstSeq} with {recordCount} records is out of range");
        }

        var actualCrc = Crc32C.Compute(packed);
        if (actualCrc != crc32c)
        {
            JournalFormatException.Throw(
                $"batch at seq {firstSeq}: bad CRC32C 0x{actualCrc:x8} over {packed.Length} bytes, expected 0x{crc32c:x8}");
        }

        Validate(packed, firstSeq, recordCount);
        _remaining = packed;
        FirstSeq = firstSeq;
        RecordCount = recordCount;
    }

    public readonly ulong FirstSeq { get; }

    public readonly uint RecordCount { get; }

    /// <summary>Seq of the batch's last record.</summary>
    public readonly ulong LastSeq => FirstSeq + RecordCount - 1;

    /// <summary>
    /// Returns the next record, or false after the last one. Never throws: the constructor has checked
    /// every record already.
    /// </summary>
    public bool TryReadNext(out JournalRecordHeader header, out ReadOnlySpan<byte> payload)
    {
        if (_read == RecordCount)
        {
            header = default;
            payload = default;
            return false;
        }

        // Validate proved this succeeds; the result is ignored only to keep the analyzer honest.
        _ = JournalRecordHeader.TryRead(_remaining, out header, out payload, out var consumed);
        _remaining = _remaining[consumed..];
        _read++;
        return true;
    }

    private static void Validate(ReadOnlySpan<byte> packed, ulong firstSeq, uint recordCount)
    {
        var rest = packed;
        for (uint i = 0; i < recordCount; i++)
        {
            if (rest.IsEmpty)
            {
                JournalFormatException.Throw(
                    $"batch at seq {firstSeq}: count mismatch, the bytes end after {i} of {recordCount} records");
            }

            if (!JournalRecordHeader.TryRead(rest, out var header, out _, out var consumed))
            {
                JournalFormatException.Throw(
                    $"batch at seq {firstSeq}: truncated, record {i + 1} of {recordCount} needs more than the {rest.Length} bytes left");
            }

            var expected = firstSeq + i;
            if (header.Seq != expected)
            {
                JournalFormatException.Throw(
                    $"batch at seq {firstSeq}: seq gap, record {i + 1} of {recordCount} has seq {header.Seq}, expected {expected}");
            }

            rest = rest[consumed..];
        }

        if (!rest.IsEmpty)
        {
            JournalFormatException.Throw(
                $"batch at seq {firstSeq}: {rest.Length} trailing bytes after {recordCount} records (count mismatch or garbage)");
        }
    }
}
