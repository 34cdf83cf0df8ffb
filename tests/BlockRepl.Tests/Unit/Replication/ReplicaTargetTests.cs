using BlockRepl.Core;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>The receiving side without a gRPC stream: what it applies, what it refuses, and the sync target's states.</summary>
public sealed class ReplicaTargetTests
{
    private const long Size = 16 << 20;

    private static JournalRecordHeader Record(ulong seq, JournalRecordKind kind, long offset, long length, int payload = 0) =>
        new(seq, kind, JournalRecordFlags.None, (uint)payload, (ulong)offset, (ulong)length);

    private static byte[] ReadBack(Volume volume, long offset, int length)
    {
        var data = new byte[length];
        volume.Read(offset, data);
        return data;
    }

    [Fact]
    public void ApplyRecord_WriteInsideTheVolume_ReachesTheImage()
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Secondary);
        var payload = Enumerable.Repeat((byte)0x5A, 4096).ToArray();

        temp.Volume.Target.ApplyRecord(Record(1, JournalRecordKind.Write, Size - 4096, 4096, 4096), payload);

        Assert.Equal(payload, ReadBack(temp.Volume, Size - 4096, 4096));
    }

    [Theory]
    [InlineData(Size - 4096, 8192)] // runs past the end
    [InlineData(Size, 4096)] // starts at the end
    [InlineData(long.MaxValue, 4096)] // an offset no volume has
    public void ApplyRecord_RangeBeyondTheVolume_RefusedAndNothingWritten(long offset, long length)
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Secondary);

        var ex = Assert.Throws<JournalFormatException>(() =>
            temp.Volume.Target.ApplyRecord(Record(7, JournalRecordKind.Write, offset, length, 4096), new byte[4096]));

        Assert.Contains("record seq 7", ex.Message, StringComparison.Ordinal);
        Assert.Contains("outside", ex.Message, StringComparison.Ordinal);
        Assert.All(ReadBack(temp.Volume, Size - 4096, 4096), b => Assert.Equal(0, b));
    }

    [Fact]
    public void ApplyRecord_ZeroRangeBeyondTheVolume_Refused()
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Secondary);

        Assert.Throws<JournalFormatException>(() => temp.Volume.Target.ApplyRecord(Record(1, JournalRecordKind.Zero, 0, Size + 1), default));
    }

    [Fact]
    public void ApplyRecord_OnAPrimary_RefusedAsReadOnly()
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Primary);

        Assert.Throws<VolumeReadOnlyException>(() =>
            temp.Volume.Target.ApplyRecord(Record(1, JournalRecordKind.Write, 0, 4096, 4096), new byte[4096]));
    }

    [Fact]
    public void ApplyRecord_TrimAfterWrite_RangeReadsAsZeroes()
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Secondary);
        var target = temp.Volume.Target;
        target.ApplyRecord(Record(1, JournalRecordKind.Write, 65536, 8192, 8192), Enumerable.Repeat((byte)0xFF, 8192).ToArray());

        target.ApplyRecord(Record(2, JournalRecordKind.Trim, 65536, 4096), default);

        Assert.All(ReadBack(temp.Volume, 65536, 4096), b => Assert.Equal(0, b));
        Assert.All(ReadBack(temp.Volume, 65536 + 4096, 4096), b => Assert.Equal(0xFF, b));
    }

    [Fact]
    public void ApplyRecord_UnknownKind_Refused()
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Secondary);

        var ex = Assert.Throws<JournalFormatException>(() => temp.Volume.Target.ApplyRecord(Record(3, (JournalRecordKind)0x7F, 0, 0), default));
        Assert.Contains("unknown kind", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void KnownMissing_SenderAheadOfApplied_CountsTheDifference()
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Secondary);

        temp.Volume.Target.NoteSenderProgress(senderLastSeq: 20, senderUnsentBytes: 12288, appliedSeq: 17);
        Assert.Equal((3UL, 12288UL), temp.Volume.KnownMissing);

        temp.Volume.Target.NoteSenderProgress(senderLastSeq: 20, senderUnsentBytes: 0, appliedSeq: 21);
        Assert.Equal((0UL, 0UL), temp.Volume.KnownMissing);
    }

    [Fact]
    public async Task SyncTarget_BeginThenEnd_InconsistentThenUpToDateAtTheSourceGeneration()
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Secondary);
        var target = temp.Volume.Target;
        Assert.True(temp.Volume.Generations.Fresh);

        target.BeginSyncTarget();
        Assert.Equal(DiskState.Inconsistent, temp.Volume.Disk);
        Assert.Equal(ConnectionState.SyncTarget, temp.Volume.Connection);
        Assert.False(temp.Volume.Generations.Fresh); // holes may not be skipped any more

        await target.EndSyncTargetAsync(generation: 0xABCDEF, full: true);
        Assert.Equal(DiskState.UpToDate, temp.Volume.Disk);
        Assert.Equal(ConnectionState.Connected, temp.Volume.Connection);
        var generations = target.DescribeForReceiver().Generations;
        Assert.Equal(0xABCDEFUL, generations.Current);
        Assert.Equal(0UL, generations.Bitmap);
        Assert.False(generations.NeedsFullSync);
    }

    [Fact]
    public void AdoptVolumeUuid_FreshNode_TakesTheSendersIdentity()
    {
        using var temp = new TempVolume(Size, role: VolumeRole.Secondary);
        var uuid = Guid.NewGuid();

        temp.Volume.Target.AdoptVolumeUuid(uuid);

        Assert.Equal(uuid, temp.Volume.VolumeUuid);
        Assert.Equal(uuid, temp.Volume.Target.DescribeForReceiver().VolumeUuid);
    }
}
