namespace BlockRepl.Core.Replication;

/// <summary>How far a replication stream to the peer has come.</summary>
internal enum LinkPhase
{
    /// <summary>No stream: writes only mark the bitmap.</summary>
    Closed,

    /// <summary>The gate is open for a stream whose handshake the peer has not accepted yet.</summary>
    Opened,

    /// <summary>The peer accepted the handshake: records flow.</summary>
    Accepted,
}

/// <summary>What can happen to a link; <see cref="LinkState.On"/> is the one transition function.</summary>
internal enum LinkEvent
{
    /// <summary>A stream opens its gate (<see cref="PeerLink.OpenStream"/>).</summary>
    Open,

    /// <summary>The peer accepted the handshake.</summary>
    Accept,

    /// <summary>The stream ended: queued and unacknowledged records went back to the bitmap.</summary>
    Close,

    /// <summary>The async queue overflowed: records are dropped and their ranges stay dirty.</summary>
    GoAhead,

    /// <summary>The link drained after running ahead.</summary>
    LeaveAhead,

    /// <summary>The link drained after running ahead and the resync of the dropped writes begins, in one step.</summary>
    LeaveAheadIntoResync,

    /// <summary>A resync's Begin marker was queued.</summary>
    BeginResync,

    /// <summary>A resync's End marker went out.</summary>
    EndResync,
}

/// <summary>
/// The state of a <see cref="PeerLink"/> as one immutable value: replaced whole (under the link's lock, through
/// <see cref="On"/>) and read whole without a lock, so status never sees a mix of two states.
/// </summary>
/// <param name="Phase">Closed, opened (handshake pending) or accepted.</param>
/// <param name="Ahead">Async only: the queue overflowed and records are being dropped into the bitmap.</param>
/// <param name="Resyncing">A resync is running: its Begin marker is queued or sent and its End marker is not.</param>
/// <remarks>
/// <code>
/// event        | Phase     | Ahead     | Resyncing
/// -------------|-----------|-----------|----------
/// Open         | Opened    | false     | kept
/// Accept       | Accepted  | kept      | kept
/// Close        | Closed    | false     | false
/// GoAhead      | kept      | true      | kept
/// LeaveAhead   | kept      | false     | kept
/// BeginResync  | kept      | kept      | true
/// EndResync    | kept      | kept      | false
/// </code>
/// Ahead and Resyncing may hold together: a resync running on an async link can overflow the queue.
/// </remarks>
internal sealed record LinkState(LinkPhase Phase, bool Ahead, bool Resyncing)
{
    /// <summary>The state of a new link, and of one whose stream ended.</summary>
    public static LinkState Closed { get; } = new(LinkPhase.Closed, false, false);

    /// <summary>The gate is open: writes are queued for a stream (accepted or not yet).</summary>
    public bool Streaming => Phase != LinkPhase.Closed;

    public bool Accepted => Phase == LinkPhase.Accepted;

    /// <summary>The connection state of DESIGN.md as the sending side sees it.</summary>
    public ConnectionState Connection =>
        Phase != LinkPhase.Accepted ? ConnectionState.Connecting
        : Ahead ? ConnectionState.Ahead
        : Resyncing ? ConnectionState.SyncSource
        : ConnectionState.Connected;

    /// <summary>The one transition function (the table above).</summary>
    public LinkState On(LinkEvent e) => e switch
    {
        LinkEvent.Open => this with { Phase = LinkPhase.Opened, Ahead = false },
        LinkEvent.Accept => this with { Phase = LinkPhase.Accepted },
        LinkEvent.Close => Closed,
        LinkEvent.GoAhead => this with { Ahead = true },
        LinkEvent.LeaveAhead => this with { Ahead = false },
        LinkEvent.LeaveAheadIntoResync => this with { Ahead = false, Resyncing = true },
        LinkEvent.BeginResync => this with { Resyncing = true },
        LinkEvent.EndResync => this with { Resyncing = false },
        _ => throw new ArgumentOutOfRangeException(nameof(e)),
    };
}
