using BenchmarkDotNet.Attributes;
using BlockRepl.Core;
using BlockRepl.Core.Replication;

namespace BlockRepl.Benchmarks;

/// <summary>
/// What the activity log adds to every write once its extent is logged (the common case: DRBD's 64:65): the fast
/// path's hold and release of 32 writes of 4 KiB spread over a 1 GiB volume whose extents are all logged. The
/// transaction cost of a newly hot extent (an fdatasync of NAME.meta) is the end-to-end benchmark's job
/// (make bench-al, with a 64-extent log that keeps evicting).
/// </summary>
[MemoryDiagnoser]
public class ActivityLogBenchmarks
{
    private const int Writes = 32;
    private readonly long[] _offsets = new long[Writes];
    private string _dir = "";
    private MetaFile _meta = null!;
    private ActivityLog _log = null!;

    [GlobalSetup]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("blockrepl-al-bench-").FullName;
        _meta = MetaFile.Create(Path.Combine(_dir, "v.meta"), VolumeMetadata.CreateNew("v", 1L << 30, VolumeRole.Primary));
        _log = new ActivityLog(1L << 30, 1024, _meta, Enumerable.Range(0, 256).Select(e => (uint)e));
        _log.Bind(() => ulong.MaxValue, _ => { });
        var random = new Random(42);
        for (var i = 0; i < Writes; i++)
        {
            _offsets[i] = random.NextInt64(1L << 18) * 4096;
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _meta.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Benchmark]
    public int HoldAndRelease32Writes()
    {
        var held = 0;
        for (var i = 0; i < Writes; i++)
        {
            if (_log.TryAcquire(_offsets[i], 4096))
            {
                held++;
                _log.Release(_offsets[i], 4096, (ulong)i);
            }
        }

        return held;
    }
}
