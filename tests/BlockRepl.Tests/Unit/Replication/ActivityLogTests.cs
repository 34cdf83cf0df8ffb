using BlockRepl.Core;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>The activity log's rules: what is logged before a write lands, what may leave, and what reaches the disk.</summary>
public sealed class ActivityLogTests : IDisposable
{
    private const long Extent = MetaFile.ExtentBytes;
    private readonly string _dir = Directory.CreateTempSubdirectory("blockrepl-al-").FullName;
    private readonly MetaFile _meta;

    public ActivityLogTests() =>
        _meta = MetaFile.Create(Path.Combine(_dir, "v.meta"), VolumeMetadata.CreateNew("v", 1L << 30, VolumeRole.Primary));

    public void Dispose()
    {
        _meta.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private ActivityLog NewLog(int capacity, Func<ulong> safeSeq, List<(uint Extent, ulong UntilSeq)>? persisted = null)
    {
        var log = new ActivityLog(1L << 30, capacity, _meta, []);
        log.Bind(safeSeq, extents => persisted?.AddRange(extents));
        return log;
    }

    [Fact]
    public async Task NewExtent_IsDurablyLoggedBeforeTheAcquireCompletes_ThenTheFastPathHolds()
    {
        var log = NewLog(64, () => 0);
        Assert.False(log.TryAcquire(5 * Extent, 4096));
        await log.AcquireAsync(5 * Extent + 100, 2 * Extent); // extents 5, 6, 7
        Assert.Equal([5u, 6u, 7u], _meta.ReadActivityLog());
        Assert.True(log.TryAcquire(6 * Extent, 4096));
        Assert.Equal(1, log.Stats.Transactions);
    }

    [Fact]
    public async Task FullLog_EvictsTheLeastRecentlyUsedIdleExtent_ForcingItsBitsWhileItsRecordsAreInFlight()
    {
        ulong safe = 0;
        var persisted = new List<(uint Extent, ulong UntilSeq)>();
        var log = NewLog(64, () => Volatile.Read(ref safe), persisted);
        for (uint e = 0; e < 64; e++)
        {
            await log.AcquireAsync(e * Extent, 4096);
            log.Release(e * Extent, 4096, seq: e + 1); // record seq e+1 in extent e
        }

        // Extent 100 needs room; nothing is durable on the peer yet (safe seq 0). The least recently used extent (0)
        // goes, its bits written all set until seq 1 is safe: the log does not wait for the peer.
        await log.AcquireAsync(100 * Extent, 4096).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal([(0u, 1UL)], persisted);
        var logged = _meta.ReadActivityLog();
        Assert.DoesNotContain(0u, logged);
        Assert.Contains(100u, logged);

        // Once seqs 1..5 are safe, those extents go first, plainly (their bits in memory are complete).
        Volatile.Write(ref safe, 5);
        persisted.Clear();
        await log.AcquireAsync(101 * Extent, 4096).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal([(1u, 0UL)], persisted);
        Assert.Equal(64, _meta.ReadActivityLog().Length);
    }

    [Fact]
    public async Task HeldExtent_IsNeverEvicted()
    {
        var log = NewLog(64, () => ulong.MaxValue);
        for (uint e = 0; e < 64; e++)
        {
            await log.AcquireAsync(e * Extent, 4096); // held: never released
        }

        var wait = log.AcquireAsync(200 * Extent, 4096);
        await Task.Delay(100);
        Assert.False(wait.IsCompleted);
        log.Release(7 * Extent, 4096, 1);
        await wait.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.DoesNotContain(7u, _meta.ReadActivityLog());
    }

    [Fact]
    public async Task Clear_EmptiesTheDurableLog()
    {
        var log = NewLog(64, () => ulong.MaxValue);
        await log.AcquireAsync(0, 3 * Extent);
        log.Release(0, 3 * Extent, 1);
        log.Clear();
        Assert.Empty(_meta.ReadActivityLog());
        Assert.False(log.TryAcquire(0, 4096));
    }

    [Fact]
    public async Task Reopened_LogNamesTheExtentsOfTheCrashedSession()
    {
        var log = NewLog(64, () => 0);
        await log.AcquireAsync(10 * Extent, 4096);
        await log.AcquireAsync(200 * Extent, 4096);
        var path = _meta.Path;
        var (file, _) = MetaFile.TryOpen(path)!.Value; // what a restart after kill -9 reads
        using (file)
        {
            Assert.Equal([10u, 200u], file.ReadActivityLog().Order());
        }
    }
}
