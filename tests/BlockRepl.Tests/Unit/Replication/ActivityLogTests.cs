using BlockRepl.Core;
using BlockRepl.Core.Journal;
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

    [Fact]
    public async Task ResyncTakenBits_StayOnDisk_WhenTheirExtentIsEvictedBeforeTheRecordsAreDurable()
    {
        // Found in review: a resync cleared a bit in memory, the extent then left the log as "safe", and the bit
        // was on disk nowhere.
        var link = new PeerLink(1L << 30, ReplicationMode.Async, PeerLossPolicy.Continue, 64L << 20);
        var al = new ActivityLog(1L << 30, 64, _meta, []);
        link.AttachStore(_meta, al);
        await al.AcquireAsync(0, 4096);
        var data = new byte[4096];
        data[0] = 1;
        Assert.Null(link.Submit(JournalRecordKind.Write, 0, 4096, data, false)); // peer away: memory bitmap only
        al.Release(0, 4096, link.LastAssignedSeq);

        link.OpenStream();
        Assert.True(link.StreamAccepted(false));
        Assert.True(link.TakeResyncRun(1 << 20, out var o, out var l)); // taken: cleared in memory
        link.SubmitResync(o, l, data, skip: false); // queued, not durable
        for (uint e = 1; e <= 64; e++)
        {
            await al.AcquireAsync(e * Extent, 4096).WaitAsync(TimeSpan.FromSeconds(10));
            al.Release(e * Extent, 4096, link.LastAssignedSeq);
        }

        Assert.DoesNotContain(0u, _meta.ReadActivityLog());
        var words = new ulong[MetaFile.BitmapBytesFor(1L << 30) / 8];
        _meta.ReadBitmap(words);
        Assert.Equal(1UL, words[0] & 1); // the range that may differ is on disk
    }

    [Fact]
    public async Task FailedEviction_KeepsTheVictimLogged_UntilItsBitsAreWritten()
    {
        var log = new ActivityLog(1L << 30, 64, _meta, []);
        var fail = true;
        var persisted = new List<uint>();
        log.Bind(() => 0, v =>
        {
            if (fail)
            {
                fail = false;
                throw new IOException("EIO");
            }

            persisted.AddRange(v.Select(x => x.Extent));
        });
        for (uint e = 0; e < 64; e++)
        {
            await log.AcquireAsync(e * Extent, 4096);
            log.Release(e * Extent, 4096, e + 1);
        }

        await Assert.ThrowsAnyAsync<IOException>(() => log.AcquireAsync(100 * Extent, 4096)); // the victim's bits failed
        await log.AcquireAsync(101 * Extent, 4096).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(_meta.ReadActivityLog().Contains(0u) || persisted.Contains(0u), "extent 0 left the log without its bits written");
    }

    [Fact]
    public async Task WaitingRequestsHoldNothing_SoManyMultiExtentRequestsNeverPinTheLogFull()
    {
        using var big = MetaFile.Create(Path.Combine(_dir, "big.meta"), VolumeMetadata.CreateNew("big", 4L << 30, VolumeRole.Primary));
        var log = new ActivityLog(4L << 30, 64, big, []);
        log.Bind(() => ulong.MaxValue, _ => { });
        for (uint e = 0; e < 64; e++)
        {
            await log.AcquireAsync(e * Extent, 4096); // 64 writes in progress fill the log
        }

        var waiters = new List<Task>();
        for (var k = 0; k < 8; k++)
        {
            waiters.Add(log.AcquireAsync((200 + 16 * k) * Extent, 16 * Extent)); // 16-extent trim pieces
            for (var h = 0; h < 8; h++)
            {
                log.Release((8 * k + h) * Extent, 4096, 0); // writes in progress complete
            }
        }

        // Each piece completes once the ones before it are done with their extents.
        foreach (var (w, k) in waiters.Select((w, k) => (w, k)))
        {
            await w.WaitAsync(TimeSpan.FromSeconds(10));
            log.Release((200 + 16 * k) * Extent, 16 * Extent, 0);
        }
    }

    [Fact]
    public async Task ManyConcurrentMultiExtentRequests_AllComplete()
    {
        using var big = MetaFile.Create(Path.Combine(_dir, "huge.meta"), VolumeMetadata.CreateNew("huge", 64L << 30, VolumeRole.Primary));
        var log = new ActivityLog(64L << 30, 64, big, []);
        log.Bind(() => ulong.MaxValue, _ => { });
        var tasks = Enumerable.Range(0, 8).Select(t => Task.Run(async () =>
        {
            var rnd = new Random(t);
            for (var i = 0; i < 200; i++)
            {
                var off = (long)(rnd.Next(0, 1000) * 16) * Extent;
                var len = 16 * Extent;
                if (!log.TryAcquire(off, len))
                {
                    await log.AcquireAsync(off, len);
                }

                await Task.Yield();
                log.Release(off, len, 0);
            }
        })).ToArray();
        await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(60));
    }
}
