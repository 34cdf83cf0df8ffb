using BenchmarkDotNet.Attributes;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;
using BlockRepl.Replication.Lz4;

namespace BlockRepl.Benchmarks;

/// <summary>
/// The sending side's CPU per batch, without sockets: 32 front-end writes of 4 KiB handed to the link (seq,
/// copy into the queue), taken by the shipper as one group-commit batch (pack + CRC32C), LZ4-compressed, and
/// acknowledged (waiters completed and awaited). Steady state allocates nothing in sync mode either (pooled waiters
/// and queue entries, one reusable shipper signal): the MemoryDiagnoser's Allocated column is the check. Data: half random, half zero-filled 512-byte runs (compressible like a
/// filesystem's metadata and partly empty blocks). Per write = the numbers / 32.
/// </summary>
[MemoryDiagnoser]
public class ShipperBenchmarks
{
    private const int Writes = 32;
    private const int WriteSize = 4096;

    private readonly byte[] _payload = new byte[WriteSize];
    private PeerLink _link = null!;
    private JournalBatchWriter _writer = null!;
    private byte[] _compressed = [];
    private readonly WriteWaiter?[] _waiters = new WriteWaiter?[Writes];

    [Params(ReplicationMode.Sync, ReplicationMode.Async)]
    public ReplicationMode Mode { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(42);
        for (var i = 0; i < WriteSize; i += 1024)
        {
            random.NextBytes(_payload.AsSpan(i, 512));
        }

        _link = new PeerLink(1L << 30, Mode, PeerLossPolicy.Continue, 64L << 20);
        _link.OpenStream();
        _link.StreamAccepted(fullResync: false);
        _writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        _compressed = new byte[Lz4Codec.MaxCompressedLength(2 << 20)];
    }

    [GlobalCleanup]
    public void Cleanup() => _writer.Dispose();

    [Benchmark]
    public async ValueTask<int> SubmitTakeCompressAck()
    {
        for (var i = 0; i < Writes; i++)
        {
            _waiters[i] = _link.Submit(JournalRecordKind.Write, (long)i * WriteSize, WriteSize, _payload, fua: false);
        }

        var take = await _link.TakeAsync(_writer, 1 << 20, TimeSpan.FromSeconds(1), CancellationToken.None).ConfigureAwait(false);
        var length = Lz4Codec.Compress(_writer.Packed, _compressed);
        var seq = take.LastSeq;
        _link.OnAck(seq, seq, seq);

        // Every write's acknowledgement is awaited, as a front end does: the pooled waiters go back for the next round.
        for (var i = 0; i < Writes; i++)
        {
            if (_waiters[i] is { } waiter)
            {
                await waiter.AsValueTask().ConfigureAwait(false);
            }
        }

        return length;
    }
}
