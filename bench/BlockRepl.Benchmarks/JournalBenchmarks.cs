using BenchmarkDotNet.Attributes;
using BlockRepl.Core.Journal;

namespace BlockRepl.Benchmarks;

/// <summary>
/// The journal batch codec alone (no LZ4, no gRPC): the shipper packing 32 x 4 KiB writes into one batch with
/// its CRC32C, and the applier checking and walking that batch. Per record = the batch numbers / 32.
/// </summary>
[MemoryDiagnoser]
public class JournalBenchmarks
{
    private const int Records = 32;
    private const int WriteSize = 4096;

    private readonly byte[] _payload = new byte[WriteSize];
    private JournalBatchWriter _writer = null!;
    private byte[] _packed = [];
    private uint _crc;
    private ulong _seq = 1;

    [GlobalSetup]
    public void Setup()
    {
        new Random(42).NextBytes(_payload);
        _writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        Pack();
        _packed = _writer.Packed.ToArray();
        _crc = _writer.PackedCrc32C;
        _seq = 1;
    }

    [GlobalCleanup]
    public void Cleanup() => _writer.Dispose();

    /// <summary>Reset, append 32 writes (header encode, payload copy, running CRC32C), return the CRC.</summary>
    [Benchmark]
    public uint PackBatch() => Pack();

    /// <summary>CRC check, structural walk, then reading every record's header and payload.</summary>
    [Benchmark]
    public ulong ReadBatch()
    {
        var reader = new JournalBatchReader(_packed, 1, Records, _crc);
        ulong sum = 0;
        while (reader.TryReadNext(out var header, out var payload))
        {
            sum += header.Offset + (ulong)payload.Length;
        }

        return sum;
    }

    /// <summary>The checksum alone over the same 129 KiB, for comparison with the two above.</summary>
    [Benchmark]
    public uint Crc32COfBatch() => Crc32C.Compute(_packed);

    private uint Pack()
    {
        _writer.Reset();
        for (var i = 0; i < Records; i++)
        {
            _writer.TryAppend(JournalRecordHeader.ForWrite(_seq++, (ulong)i * WriteSize, WriteSize), _payload);
        }

        return _writer.PackedCrc32C;
    }
}
