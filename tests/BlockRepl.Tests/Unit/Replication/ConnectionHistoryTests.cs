using BlockRepl.Core;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>The record of connection state changes: counted and logged once per change, in order, however brief.</summary>
public sealed class ConnectionHistoryTests
{
    [Fact]
    public void Enter_ChangesCountedAndLogged_RepeatsIgnored()
    {
        var lines = new List<string>();
        var history = new ConnectionHistory("vol", ConnectionState.Standalone) { Log = lines.Add };
        foreach (var state in new[]
        {
            ConnectionState.Connecting, ConnectionState.Connected, ConnectionState.Behind, ConnectionState.Behind,
            ConnectionState.Connected, ConnectionState.Behind, ConnectionState.SyncTarget, ConnectionState.Connected,
        })
        {
            history.Enter(state);
        }

        Assert.Equal(
            new Dictionary<string, long> { ["behind"] = 2, ["connected"] = 3, ["connecting"] = 1, ["synctarget"] = 1 },
            history.Entries());
        Assert.Equal(
        [
            "volume vol: connection standalone -> connecting", "volume vol: connection connecting -> connected",
            "volume vol: connection connected -> behind", "volume vol: connection behind -> connected",
            "volume vol: connection connected -> behind", "volume vol: connection behind -> synctarget",
            "volume vol: connection synctarget -> connected",
        ], lines);
    }

    [Fact]
    public async Task PeerLink_AheadForOneAck_ReportsAheadThenSyncSource_InOrder()
    {
        // The link is ahead only between the overflow and the ack that drains it: no status poll need see it,
        // but the link reports it as it happens.
        var states = new List<ConnectionState>();
        var link = new PeerLink(64L << 20, ReplicationMode.Async, PeerLossPolicy.Continue, 2 << 20) { StateChanged = states.Add };
        link.OpenStream();
        link.StreamAccepted(false);
        for (var i = 0; i < 3; i++)
        {
            Assert.Null(link.Submit(JournalRecordKind.Write, (long)i << 20, 1 << 20, new byte[1 << 20], fua: false));
        }

        using var writer = new JournalBatchWriter(JournalBatchWriter.MinBatchBytes);
        var take = await link.TakeAsync(writer, 1 << 20, TimeSpan.FromSeconds(5), CancellationToken.None);
        take = await link.TakeAsync(writer, 1 << 20, TimeSpan.FromSeconds(5), CancellationToken.None);
        Assert.True(link.OnAck(take.LastSeq, 0, 0));
        link.CloseStream();

        Assert.Equal(
            [ConnectionState.Connected, ConnectionState.Ahead, ConnectionState.SyncSource, ConnectionState.Connecting],
            states);
    }
}
