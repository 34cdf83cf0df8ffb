using System.Buffers.Binary;
using BlockRepl.Core;
using BlockRepl.Iscsi;
using BlockRepl.Tests.Unit;

namespace BlockRepl.Tests.Iscsi;

/// <summary>The SCSI block command set over a real volume, without the iSCSI transport.</summary>
public sealed class ScsiLogicalUnitTests : IDisposable
{
    private readonly TempVolume _vol = new(size: 16 << 20);
    private readonly ScsiLogicalUnit _unit;
    private readonly ScsiNexus _a = new("iqn.2026-11.test:a", 1);
    private readonly ScsiNexus _b = new("iqn.2026-11.test:b", 2);

    public ScsiLogicalUnitTests() => _unit = new ScsiLogicalUnit(_vol.Volume);

    public void Dispose() => _vol.Dispose();

    private ScsiResult Run(ScsiNexus nexus, byte[] cdb, byte[]? data = null) =>
        _unit.Execute(nexus, 0, cdb, data, data?.Length ?? 0).AsTask().GetAwaiter().GetResult();

    private static byte[] CompareAndWrite(ulong lba, byte blocks)
    {
        var cdb = new byte[16];
        cdb[0] = 0x89;
        BinaryPrimitives.WriteUInt64BigEndian(cdb.AsSpan(2), lba);
        cdb[13] = blocks;
        return cdb;
    }

    private static byte[] ProutCdb(byte serviceAction, byte type = 0)
    {
        var cdb = new byte[16];
        cdb[0] = 0x5f;
        cdb[1] = serviceAction;
        cdb[2] = type;
        BinaryPrimitives.WriteUInt32BigEndian(cdb.AsSpan(5), 24);
        return cdb;
    }

    private static byte[] ProutParameters(ulong key, ulong serviceKey)
    {
        var p = new byte[24];
        BinaryPrimitives.WriteUInt64BigEndian(p, key);
        BinaryPrimitives.WriteUInt64BigEndian(p.AsSpan(8), serviceKey);
        return p;
    }

    [Fact]
    public void CompareAndWrite_ConcurrentIncrementers_NoUpdateIsLost()
    {
        // Each worker thread increments a counter in block 10 by read + COMPARE AND WRITE(old -> old+1), retrying
        // on MISCOMPARE, while another thread writes a nearby block. If compare and write were not one atomic
        // step, two workers could both win with the same old value and the total would come up short.
        // 64-block (32 KiB) compares widen the window between the read and the write that atomicity must close.
        const int workers = 4;
        const int increments = 300;
        const byte blocks = 64;
        var miscompares = 0;
        var stop = false;
        var failures = new System.Collections.Concurrent.ConcurrentQueue<Exception>();
        using var start = new Barrier(workers + 1);
        var threads = new List<Thread>();
        void Guarded(Action body)
        {
            try
            {
                start.SignalAndWait();
                body();
            }
            catch (Exception ex)
            {
                failures.Enqueue(ex);
            }
        }

        threads.Add(new Thread(() => Guarded(() =>
        {
            var block = new byte[512];
            var write = IscsiTargetTests.Write10(100, 1);
            while (!Volatile.Read(ref stop))
            {
                block[0]++;
                Assert.Equal(ScsiSense.StatusGood, Run(_a, write, block).Status);
            }
        })));
        for (var w = 0; w < workers; w++)
        {
            var nexus = w % 2 == 0 ? _a : _b;
            threads.Add(new Thread(() => Guarded(() =>
            {
                for (var i = 0; i < increments; i++)
                {
                    while (true)
                    {
                        var read = Run(nexus, IscsiTargetTests.Read10(10, blocks));
                        var current = read.Data.AsSpan(0, blocks * 512).ToArray();
                        read.Release();
                        var next = (byte[])current.Clone();
                        BinaryPrimitives.WriteUInt64LittleEndian(next, BinaryPrimitives.ReadUInt64LittleEndian(current) + 1);
                        var result = Run(nexus, CompareAndWrite(10, blocks), [.. current, .. next]);
                        if (result.Status == ScsiSense.StatusGood)
                        {
                            break;
                        }

                        Assert.Equal(ScsiSense.StatusCheckCondition, result.Status);
                        Assert.Equal(ScsiSense.KeyMiscompare, result.Sense![2]);
                        Interlocked.Increment(ref miscompares);
                    }
                }
            })));
        }

        threads.ForEach(t => t.Start());
        threads.Skip(1).ToList().ForEach(t => t.Join());
        Volatile.Write(ref stop, true);
        threads[0].Join();
        Assert.Empty(failures);
        var final = new byte[8];
        _vol.Volume.Read(10 * 512, final);
        Assert.Equal((ulong)(workers * increments), BinaryPrimitives.ReadUInt64LittleEndian(final));
        Assert.True(miscompares > 0, "the workers never raced (no MISCOMPARE), so atomicity went untested");
    }

    [Fact]
    public void CompareAndWrite_Mismatch_ReportsOffsetOfFirstDifferenceAndWritesNothing()
    {
        var original = new byte[1024];
        original.AsSpan().Fill(0x41);
        Assert.Equal(ScsiSense.StatusGood, Run(_a, IscsiTargetTests.Write10(20, 2), original).Status);
        var verify = (byte[])original.Clone();
        verify[700] = 0x42;
        var write = new byte[1024];
        write.AsSpan().Fill(0x43);
        var result = Run(_a, CompareAndWrite(20, 2), [.. verify, .. write]);
        Assert.Equal(ScsiSense.StatusCheckCondition, result.Status);
        Assert.Equal(ScsiSense.KeyMiscompare, result.Sense![2]);
        Assert.Equal(0x1d, result.Sense[12]);
        Assert.Equal(0x80, result.Sense[0] & 0x80); // VALID: INFORMATION holds the offset
        Assert.Equal(700u, BinaryPrimitives.ReadUInt32BigEndian(result.Sense.AsSpan(3)));
        var after = new byte[1024];
        _vol.Volume.Read(20 * 512, after);
        Assert.Equal(original, after);
    }

    [Fact]
    public void PersistentReservation_WriteExclusive_OtherInitiatorReadsButCannotWrite()
    {
        Assert.Equal(ScsiSense.StatusGood, Run(_a, ProutCdb(0), ProutParameters(0, 0xaaaa)).Status);  // REGISTER
        Assert.Equal(ScsiSense.StatusGood, Run(_b, ProutCdb(0), ProutParameters(0, 0xbbbb)).Status);
        Assert.Equal(ScsiSense.StatusGood, Run(_a, ProutCdb(1, 1), ProutParameters(0xaaaa, 0)).Status); // RESERVE, WE

        var block = new byte[512];
        Assert.Equal(ScsiSense.StatusReservationConflict, Run(_b, IscsiTargetTests.Write10(0, 1), block).Status);
        Assert.Equal(ScsiSense.StatusGood, Run(_b, IscsiTargetTests.Read10(0, 1)).Status);
        Assert.Equal(ScsiSense.StatusGood, Run(_a, IscsiTargetTests.Write10(0, 1), block).Status);

        // B preempts A's reservation with A's key: A loses its registration and sees a unit attention.
        Assert.Equal(ScsiSense.StatusGood, Run(_b, ProutCdb(4, 1), ProutParameters(0xbbbb, 0xaaaa)).Status);
        var ua = Run(_a, IscsiTargetTests.Read10(0, 1));
        Assert.Equal(ScsiSense.StatusCheckCondition, ua.Status);
        Assert.Equal(ScsiSense.KeyUnitAttention, ua.Sense![2]);
        Assert.Equal(ScsiSense.StatusReservationConflict, Run(_a, IscsiTargetTests.Write10(0, 1), block).Status);
        Assert.Equal(ScsiSense.StatusGood, Run(_b, IscsiTargetTests.Write10(0, 1), block).Status);

        // READ KEYS: only B's key is left.
        var cdb = new byte[16];
        cdb[0] = 0x5e;
        BinaryPrimitives.WriteUInt16BigEndian(cdb.AsSpan(7), 64);
        var keys = Run(_a, cdb);
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(keys.Data.AsSpan(4)));
        Assert.Equal(0xbbbbUL, BinaryPrimitives.ReadUInt64BigEndian(keys.Data.AsSpan(8)));
    }

    [Fact]
    public async Task SecondaryVolume_Writes_DataProtectWriteProtected()
    {
        using var secondary = new TempVolume(size: 1 << 20, role: VolumeRole.Secondary);
        var unit = new ScsiLogicalUnit(secondary.Volume);
        var result = await unit.Execute(_a, 0, IscsiTargetTests.Write10(0, 1), new byte[512], 512);
        Assert.Equal(ScsiSense.StatusCheckCondition, result.Status);
        Assert.Equal(ScsiSense.KeyDataProtect, result.Sense![2]);
        Assert.Equal(0x27, result.Sense[12]);
    }

    [Fact]
    public void Unmap_ThenGetLbaStatus_ReportsDeallocatedRangeFromTheRequestedLba()
    {
        var data = new byte[64 * 512];
        data.AsSpan().Fill(0x5a);
        Assert.Equal(ScsiSense.StatusGood, Run(_a, IscsiTargetTests.Write10(0, 64), data).Status);
        var unmap = new byte[16];
        unmap[0] = 0x42;
        BinaryPrimitives.WriteUInt16BigEndian(unmap.AsSpan(7), 24);
        var list = new byte[24];
        BinaryPrimitives.WriteUInt16BigEndian(list, 22);
        BinaryPrimitives.WriteUInt16BigEndian(list.AsSpan(2), 16);
        BinaryPrimitives.WriteUInt64BigEndian(list.AsSpan(8), 16);   // LBA 16..47 (16 KiB, whole filesystem blocks)
        BinaryPrimitives.WriteUInt32BigEndian(list.AsSpan(16), 32);
        Assert.Equal(ScsiSense.StatusGood, Run(_a, unmap, list).Status);

        var zeroes = new byte[32 * 512];
        _vol.Volume.Read(16 * 512, zeroes);
        Assert.DoesNotContain(zeroes, b => b != 0);

        var status = new byte[16];
        status[0] = 0x9e;
        status[1] = 0x12;
        BinaryPrimitives.WriteUInt64BigEndian(status.AsSpan(2), 8);
        BinaryPrimitives.WriteUInt32BigEndian(status.AsSpan(10), 8 + (16 * 3));
        var result = Run(_a, status);
        var d = result.Data.AsSpan(8);
        Assert.Equal(8UL, BinaryPrimitives.ReadUInt64BigEndian(d));           // mapped 8..15
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(d[8..]));
        Assert.Equal(0, d[12]);
        Assert.Equal(16UL, BinaryPrimitives.ReadUInt64BigEndian(d[16..]));    // deallocated 16..47
        Assert.Equal(32u, BinaryPrimitives.ReadUInt32BigEndian(d[24..]));
        Assert.Equal(1, d[28]);
    }
}
