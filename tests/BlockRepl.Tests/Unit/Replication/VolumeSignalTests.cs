using BlockRepl.Core;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>The volume's waits: woken by a role change or by the link, not by a clock.</summary>
public sealed class VolumeSignalTests
{
    [Fact]
    public async Task WaitForRoleAsync_Secondary_CompletesOnPromote()
    {
        using var temp = new TempVolume(role: VolumeRole.Secondary);
        var changed = temp.Volume.RoleChanged;
        var primary = temp.Volume.WaitForRoleAsync(VolumeRole.Primary, CancellationToken.None);
        Assert.False(primary.IsCompleted);

        Assert.True(temp.Volume.Promote(force: true).Done);
        await primary.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.True(changed.IsCompletedSuccessfully);
        Assert.False(temp.Volume.RoleChanged.IsCompleted); // a new signal for the next change
    }

    [Fact]
    public async Task WaitUntilAsync_ConditionOnTheRole_WokenByTheRoleChangeAlone()
    {
        using var temp = new TempVolume(role: VolumeRole.Secondary);
        temp.Volume.AttachPeer(ReplicationMode.Sync, PeerLossPolicy.Continue, 8 << 20);
        var primary = temp.Volume.Source!.WaitUntilAsync(_ => temp.Volume.Role == VolumeRole.Primary, Timeout.InfiniteTimeSpan, CancellationToken.None);
        Assert.False(primary.IsCompleted);

        Assert.True(temp.Volume.Promote(force: true).Done); // the link does not change: only the role signals
        Assert.True(await primary.WaitAsync(TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public async Task WaitForReplicationDrainAsync_RecordInFlight_CompletesOnTheDurableAck()
    {
        using var temp = new TempVolume();
        temp.Volume.AttachPeer(ReplicationMode.Async, PeerLossPolicy.Continue, 8 << 20);
        var link = temp.Volume.Link!;
        link.OpenStream();
        Assert.False(link.StreamAccepted(fullResync: false));
        Assert.Null(link.Submit(JournalRecordKind.Write, 0, 4096, new byte[4096], fua: false));
        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        await link.TakeAsync(writer, 1 << 20, TimeSpan.FromSeconds(5), CancellationToken.None);

        var drained = temp.Volume.WaitForReplicationDrainAsync(Timeout.InfiniteTimeSpan, CancellationToken.None);
        Assert.False(drained.IsCompleted);
        Assert.True(link.OnAck(1, 1, 1));
        await drained.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.True(temp.Volume.IsReplicationDrained);
    }
}
