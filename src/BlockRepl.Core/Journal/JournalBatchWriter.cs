using System.Buffers;

namespace BlockRepl.Core.Journal;

/// <summary>
/// Packs journal records back to back (the uncompressed body of a replication <c>Batch</c>, layout on
/// <see cref="JournalRecordHeader"/>) into one pooled buffer that is reused batch after batch.
/// <para>
/// Invariants: records are contiguous in seq (each appended seq is <see cref="FirstSeq"/> +
/// <see cref="RecordCount"/>); <see cref="UncompressedLength"/> never exceeds <see cref="MaxBatchBytes"/>;
/// <see cref="PackedCrc32C"/> is always the CRC32C of <see cref="Packed"/> (kept up to date on append, while
/// the bytes are still in cache). The bound is at least <see cref="JournalRecordHeader.MaxEncodedLength"/>,
/// so every valid record fits an empty batch and "does not fit" always means "ship this batch first".
/// Not thread-safe: one shipper loop owns a writer.
/// </para>
/// </summary>
internal sealed class JournalBatchWriter : IDisposable
{
    /// <summary>The smallest allowed bound: one record of the largest size.</summary>
    public const int MinBatchBytes = JournalRecordHeader.MaxEncodedLength;

    private byte[]? _buffer;
    private int _length;
    private int _count;
    private ulong _firstSeq;
    private uint _crc;

    /// <param name="maxBatchBytes">
    /// The hard bound on <see cref="UncompressedLength"/> (the handshake's <c>max_batch_bytes</c>); at least
    /// <see cref="MinBatchBytes"/>. A shipper that wants smaller batches stops appending earlier on its own.
    /// </param>
    public JournalBatchWriter(int maxBatchBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBatchBytes, MinBatchBytes);
        MaxBatchBytes = maxBatchBytes;
        _buffer = ArrayPool<byte>.Shared.Rent(maxBatchBytes);
    }

    public int MaxBatchBytes { get; }

    /// <summary>Seq of the first record; 0 while the batch is empty.</summary>
    public ulong FirstSeq => _firstSeq;

    /// <summary>The seq the next record must have: 0 while empty (any seq but 0 may start a batch).</summary>
    public ulong NextSeq => _count == 0 ? 0 : _firstSeq + (ulong)_count;

    public int RecordCount => _count;

    /// <summary>Bytes packed so far (<c>Batch.uncompressed_length</c>).</summary>
    public int UncompressedLength => _length;

    /// <summary>Bytes still free under the bound.</summary>
    public int RemainingBytes => MaxBatchBytes - _length;

    /// <summary>CRC32C of <see cref="Packed"/> (<c>Batch.crc32c</c>).</summary>
    public uint PackedCrc32C => _crc;

    /// <summary>The packed records; valid until the next append, <see cref="Reset"/> or dispose.</summary>
    public ReadOnlySpan<byte> Packed => Buffer.AsSpan(0, _length);

    /// <summary>The packed records as memory (e.g. for an LZ4 call); same lifetime as <see cref="Packed"/>.</summary>
    public ReadOnlyMemory<byte> PackedMemory => Buffer.AsMemory(0, _length);

    private byte[] Buffer => _buffer ?? throw new ObjectDisposedException(nameof(JournalBatchWriter));

    /// <summary>
    /// Appends one record. Returns false, and changes nothing, when it would take the batch past
    /// <see cref="MaxBatchBytes"/> (the batch is full: ship it, <see cref="Reset"/>, append again). Throws
    /// <see cref="ArgumentException"/> for a record that could never be valid on the wire (a malformed header,
    /// a payload that is not <c>PayloadLength</c> bytes, seq 0, or a seq that does not follow the last one):
    /// those are sender bugs, not a full batch.
    /// </summary>
    public bool TryAppend(in JournalRecordHeader header, ReadOnlySpan<byte> payload)
    {
        var buffer = Buffer;
        if (header.Problem() is { } problem)
        {
            throw new ArgumentException($"journal record seq {header.Seq}: {problem}", nameof(header));
        }

        if (payload.Length != header.PayloadLength)
        {
            throw new ArgumentException(
                $"journal record seq {header.Seq}: payload is {payload.Length} bytes, header says {header.PayloadLength}",
                nameof(payload));
        }

        if (header.Seq == 0)
        {
            throw new ArgumentException("journal record seq 0: seqs start at 1 (0 means none in acks)", nameof(header));
        }

        if (_count != 0 && header.Seq != NextSeq)
        {
            throw new ArgumentException(
                $"journal record seq {header.Seq} does not follow seq {NextSeq - 1} in the batch", nameof(header));
        }

        var size = header.EncodedLength;
        if (size > MaxBatchBytes - _length)
        {
            return false;
        }

        var destination = buffer.AsSpan(_length, size);
        header.Write(destination);
        payload.CopyTo(destination[JournalRecordHeader.Size..]);
        _crc = Crc32C.Append(_crc, destination);
        if (_count == 0)
        {
            _firstSeq = header.Seq;
        }

        _count++;
        _length += size;
        return true;
    }

    /// <summary>Empties the batch and keeps the buffer for the next one.</summary>
    public void Reset()
    {
        _length = 0;
        _count = 0;
        _firstSeq = 0;
        _crc = 0;
    }

    public void Dispose()
    {
        var buffer = _buffer;
        _buffer = null;
        Reset();
        if (buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
