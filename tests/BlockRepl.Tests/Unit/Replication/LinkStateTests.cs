using BlockRepl.Core;
using BlockRepl.Core.Replication;

namespace BlockRepl.Tests.Unit.Replication;

/// <summary>Every row of the transition table of <see cref="LinkState"/>, and the connection state it shows.</summary>
public sealed class LinkStateTests
{
    private static readonly LinkState AcceptedAheadResyncing = new(LinkPhase.Accepted, Ahead: true, Resyncing: true);

    [Fact]
    public void Open_FromAnyState_OpenedNotAheadResyncKept() =>
        Assert.Equal(new LinkState(LinkPhase.Opened, false, true), AcceptedAheadResyncing.On(LinkEvent.Open));

    [Fact]
    public void Accept_Opened_AcceptedRestKept() =>
        Assert.Equal(new LinkState(LinkPhase.Accepted, false, false), LinkState.Closed.On(LinkEvent.Open).On(LinkEvent.Accept));

    [Fact]
    public void Close_FromAnyState_Closed() =>
        Assert.Same(LinkState.Closed, AcceptedAheadResyncing.On(LinkEvent.Close));

    [Fact]
    public void GoAheadAndLeaveAhead_OnlyAheadChanges()
    {
        var accepted = new LinkState(LinkPhase.Accepted, false, true);
        Assert.Equal(accepted with { Ahead = true }, accepted.On(LinkEvent.GoAhead));
        Assert.Equal(accepted, accepted.On(LinkEvent.GoAhead).On(LinkEvent.LeaveAhead));
    }

    [Fact]
    public void BeginAndEndResync_OnlyResyncingChanges()
    {
        var ahead = new LinkState(LinkPhase.Accepted, true, false);
        Assert.Equal(ahead with { Resyncing = true }, ahead.On(LinkEvent.BeginResync));
        Assert.Equal(ahead, ahead.On(LinkEvent.BeginResync).On(LinkEvent.EndResync));
    }

    [Fact]
    public void LeaveAheadIntoResync_Ahead_ResyncingNotAheadInOneStep()
    {
        var ahead = new LinkState(LinkPhase.Accepted, true, false);
        var next = ahead.On(LinkEvent.LeaveAheadIntoResync);
        Assert.Equal(new LinkState(LinkPhase.Accepted, false, true), next);
        Assert.Equal(ConnectionState.SyncSource, next.Connection);
    }

    [Theory]
    [InlineData(LinkPhase.Closed, false, false, ConnectionState.Connecting)]
    [InlineData(LinkPhase.Opened, true, true, ConnectionState.Connecting)]
    [InlineData(LinkPhase.Accepted, false, false, ConnectionState.Connected)]
    [InlineData(LinkPhase.Accepted, false, true, ConnectionState.SyncSource)]
    [InlineData(LinkPhase.Accepted, true, true, ConnectionState.Ahead)]
    internal void Connection_EachState_DesignName(LinkPhase phase, bool ahead, bool resyncing, ConnectionState expected) =>
        Assert.Equal(expected, new LinkState(phase, ahead, resyncing).Connection);
}
