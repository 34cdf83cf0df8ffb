using System.Buffers.Binary;
using BenchmarkDotNet.Attributes;
using BlockRepl.Core;
using BlockRepl.Nbd;
using Microsoft.Extensions.Logging.Abstractions;

namespace BlockRepl.Benchmarks;

/// <summary>
/// The per-request path of the NBD server without sockets: 32 requests arrive in one receive (QD32), are
/// parsed, run against a volume on a temp file (page cache), and their replies encoded and "sent".
/// Reported per request (OperationsPerInvoke). Target: 0 bytes allocated per request.
/// </summary>
[MemoryDiagnoser]
public class NbdRequestPathBenchmarks
{
    private const int Depth = 32;
    private const int Rounds = 1024;
    private string _dir = null!;
    private Volume _volume = null!;
    private Dictionary<string, NbdExport> _exports = null!;
    private LoopTransport _writes = null!;
    private LoopTransport _reads = null!;

    [GlobalSetup]
    public void Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), "blockrepl-bench-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        _volume = Volume.Open(new VolumeOptions { Name = "bench", ImagePath = Path.Combine(_dir, "bench.img"), SizeBytes = 64 << 20 });
        var fill = new byte[1 << 20];
        new Random(1).NextBytes(fill);
        for (var off = 0L; off < _volume.Size; off += fill.Length)
        {
            _volume.Write(off, fill, fua: false).AsTask().Wait();
        }

        _exports = new Dictionary<string, NbdExport> { ["bench"] = new NbdExport(_volume, "bench") };
        var handshake = Handshake();
        _writes = new LoopTransport(handshake, Batch(NbdProtocol.CmdWrite)) { Rounds = Rounds };
        _reads = new LoopTransport(handshake, Batch(NbdProtocol.CmdRead)) { Rounds = Rounds };
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _volume.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    // A connection's receive and send buffers belong to the connection, so each iteration gets a fresh
    // connection in IterationSetup and the measured invocation is the handshake plus Depth * Rounds
    // requests: the handshake's few hundred bytes amortise to under one byte per request.
    private NbdConnection? _connection;

    [IterationSetup(Target = nameof(Write4KiB))]
    public void SetupWrites() => _connection = NewConnection(_writes);

    [IterationSetup(Target = nameof(Read4KiB))]
    public void SetupReads() => _connection = NewConnection(_reads);

    [IterationCleanup]
    public void CleanupConnection() => _connection?.Dispose();

    [Benchmark(OperationsPerInvoke = Depth * Rounds)]
    public void Write4KiB() => _connection!.Run();

    [Benchmark(OperationsPerInvoke = Depth * Rounds)]
    public void Read4KiB() => _connection!.Run();

    private NbdConnection NewConnection(LoopTransport transport)
    {
        transport.Reset();
        return new NbdConnection(transport, _exports, "bench", NullLogger.Instance);
    }

    private static byte[] Handshake()
    {
        var ms = new MemoryStream();
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, NbdProtocol.ClientFixedNewstyle | NbdProtocol.ClientNoZeroes);
        ms.Write(b);
        Option(ms, NbdProtocol.OptStructuredReply, []);
        var name = "bench"u8.ToArray();
        var go = new byte[4 + name.Length + 2];
        BinaryPrimitives.WriteUInt32BigEndian(go, (uint)name.Length);
        name.CopyTo(go, 4);
        Option(ms, NbdProtocol.OptGo, go);
        return ms.ToArray();
    }

    private static void Option(MemoryStream ms, uint option, byte[] data)
    {
        Span<byte> h = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(h, NbdProtocol.OptionMagic);
        BinaryPrimitives.WriteUInt32BigEndian(h[8..], option);
        BinaryPrimitives.WriteUInt32BigEndian(h[12..], (uint)data.Length);
        ms.Write(h);
        ms.Write(data);
    }

    private static byte[] Batch(ushort type)
    {
        var rng = new Random(2);
        var ms = new MemoryStream();
        var header = new byte[NbdProtocol.RequestHeaderSize];
        var payload = new byte[4096];
        for (var i = 0; i < Depth; i++)
        {
            var offset = (ulong)rng.Next(0, (64 << 20) / 4096) * 4096;
            new NbdRequestHeader(0, type, (ulong)i, offset, 4096).WriteTo(header);
            ms.Write(header);
            if (type == NbdProtocol.CmdWrite)
            {
                rng.NextBytes(payload);
                ms.Write(payload);
            }
        }

        return ms.ToArray();
    }
}
