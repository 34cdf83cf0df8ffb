using System.Buffers;
using System.Diagnostics;
using BlockRepl.Core.Journal;

namespace BlockRepl.Core.Replication;

/// <summary>How the primary acknowledges writes (DESIGN.md, "The write path").</summary>
public enum ReplicationMode
{
    /// <summary>After the local write and the peer's apply (durable on both for FUA and flushes).</summary>
    Sync,

    /// <summary>After the local write; records wait in a bounded queue, and the link goes ahead when it is full.</summary>
    Async,
}

/// <summary>What the primary does with writes while its peer is away.</summary>
public enum PeerLossPolicy
{
    /// <summary>Go on locally and track the written ranges in the dirty bitmap.</summary>
    Continue,

    /// <summary>Hold writes until the peer is back and has everything.</summary>
    Block,
}

/// <summary>A resync boundary in the stream: the receiver is inconsistent between Begin and End.</summary>
/// <param name="Begin">True for the start of a resync, false for its end.</param>
/// <param name="TotalBytes">Bytes the resync covers (Begin only).</param>
/// <param name="Full">A full sync rather than a bitmap resync.</param>
/// <param name="Generation">At End: the sender's current generation, which the receiver adopts.</param>
internal sealed record LinkMarker(bool Begin, long TotalBytes, bool Full, ulong Generation);

/// <summary>One record waiting to go out, or a marker.</summary>
internal sealed class LinkItem
{
    public JournalRecordHeader Header;
    public byte[]? Payload;
    public long EnqueuedAt;
    public LinkMarker? Marker;
    public ChecksumProbe? Probe;
    public PeerRead? Read;
}

/// <summary>What <see cref="PeerLink.TakeAsync"/> produced.</summary>
internal readonly record struct LinkTake(int Records, long PayloadBytes, LinkMarker? Marker, bool Idle, ulong LastSeq, long UnsentBytes, ChecksumProbe? Probe = null, PeerRead? Read = null);

/// <summary>Replication state of one volume on its sending side, as seen by front ends, shipper and status.</summary>
public readonly record struct ReplicationSnapshot(
    ulong LastSeq,
    ulong ReceivedSeq,
    ulong AppliedSeq,
    ulong DurableSeq,
    long QueuedRecords,
    long QueuedBytes,
    long OldestUnackedMicroseconds,
    long DirtyBytes,
    long PayloadBytes,
    long WireBytes,
    long Batches,
    long Records,
    bool ResyncActive,
    long ResyncTotalBytes,
    long ResyncDoneBytes,
    bool ResyncFull,
    double ResyncElapsedSeconds,
    long AheadCount,
    long Connects,
    long Disconnects,
    string ResyncReason = "",
    long LastResyncBytes = 0,
    double LastResyncSeconds = 0,
    string LastResyncReason = "",
    bool LastResyncFull = false,
    int ActivityLogHot = 0,
    long ActivityLogTransactions = 0,
    long ActivityLogEvictions = 0);

/// <summary>
/// The primary's side of one peer (the replication source): sequence numbers, the bounded send queue,
/// sent-but-not-durable records, the dirty bitmap, the acknowledgement waiters of sync mode and the ahead state of
/// async mode (<see cref="LinkState"/>). It owns the outstanding checksum probes (<see cref="ChecksumProbes"/>) and
/// reads through the peer (<see cref="PeerReads"/>), which travel in order with the records.
/// </summary>
/// <remarks>
/// The invariant that makes every resync exact: every range that may differ on the peer is either dirty in
/// the bitmap or covered by a record that is queued or sent and not yet acknowledged durable. When a stream
/// ends, queued and unacknowledged records fall back into the bitmap (<see cref="CloseStream"/>); a bit
/// clears only when the resync hands its range to a record (<see cref="TakeResyncRun"/>). Everything here is
/// guarded by one lock; the volume calls the Submit methods under its own ordering lock, so the order of
/// sequence numbers is the order of the local writes.
/// </remarks>
internal sealed class PeerLink
{
    /// <summary>Records larger than this are split (<see cref="LocksAndLimits.MaxRecordPayload"/>).</summary>
    public const int MaxRecordPayload = LocksAndLimits.MaxRecordPayload;

    /// <summary>The largest read one request through the peer carries (<see cref="LocksAndLimits.MaxPeerRead"/>).</summary>
    public const int MaxPeerRead = LocksAndLimits.MaxPeerRead;

    private readonly Lock _gate = new();
    private readonly Queue<LinkItem> _queue = new();
    private readonly Queue<(ulong Seq, long Offset, long Length, long EnqueuedAt, long Bytes)> _unacked = new();
    private readonly Queue<(ulong Seq, WriteWaiter Done)> _appliedWaiters = new();
    private readonly Queue<(ulong Seq, WriteWaiter Done)> _durableWaiters = new();
    private readonly List<WriteWaiter> _ackedWaiters = []; // filled and drained by OnAck (one ack loop at a time)
    private readonly WriteWaiterPool _waiters = new();
    private readonly Stack<LinkItem> _freeItems = new(); // guarded by _gate
    private readonly List<WriteWaiter> _blocked = [];
    private readonly List<TaskCompletionSource> _spaceWaiters = [];
    private readonly List<(long Fill, TaskCompletionSource Done)> _resyncSpaceWaiters = [];
    private long _lastAppRecordAt;
    private bool _announceAhead; // went ahead: the shipper tells the peer at once (a ping), not at the next keepalive
    private readonly List<TaskCompletionSource> _streamWaiters = [];
    private readonly PersistentBitmap _bitmap; // its in-memory side guarded by _gate
    private readonly ShipperSignal _wake = new();
    private ulong _nextSeq = 1;
    private ulong _received;
    private ulong _applied;
    private ulong _durable;
    private ulong _lastSent;
    private long _queuedBytes;
    private long _inflightBytes; // sent, not yet acknowledged as received (async congestion counts it)
    private readonly Queue<(ulong Seq, long Cost)> _unreceived = new();
    private volatile LinkState _state = LinkState.Closed; // replaced only under _gate, by MoveLocked
    private ulong _releaseBlockedAt;
    private long _payloadBytes;
    private long _wireBytes;
    private long _batches;
    private long _records;
    private bool _resyncFull;
    private long _resyncTotal;
    private long _resyncDone;
    private long _resyncStarted;
    private long _resyncCursor;
    private long _aheadCount;
    private bool _holesMaySkip;
    private bool _drainedAtClose;
    private long _connects;
    private long _disconnects;
    private ulong _lastResyncSeq;
    private string _resyncReason = "";
    private ConnectionState _reported = ConnectionState.Connecting; // as last reported to StateChanged
    private (long Bytes, double Seconds, string Reason, bool Full) _lastResync;
    private ActivityLog? _al; // told when the safe seq moves (bound to the bitmap by AttachStore)
    private readonly ChecksumProbes _probes = new(); // guarded by _gate
    private readonly PeerReads _reads = new(); // guarded by _gate
    private volatile bool _peerChecksums;

    public PeerLink(long sizeBytes, ReplicationMode mode, PeerLossPolicy onPeerLoss, long maxQueueBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxQueueBytes, LocksAndLimits.MinSendQueueBytes);
        _bitmap = new PersistentBitmap(sizeBytes, _gate, BitmapHorizonLocked);
        Mode = mode;
        OnPeerLoss = onPeerLoss;
        MaxQueueBytes = maxQueueBytes;
    }

    public ReplicationMode Mode { get; }

    /// <summary>
    /// Makes the bitmap persistent in <paramref name="meta"/>: loads the bits saved there (ORed into memory) and
    /// binds the activity log, which decides when pages are written. Called once, before the first write.
    /// </summary>
    public void AttachStore(MetaFile meta, ActivityLog? al)
    {
        lock (_gate)
        {
            _al = al;
        }

        _bitmap.Attach(meta, al, () => SafeSeq);
    }

    /// <summary>The persistent dirty bitmap (its bit methods only under the link's lock).</summary>
    public PersistentBitmap Bitmap => _bitmap;

    /// <summary>What a bitmap page may drop on disk now (called by the bitmap under <see cref="_gate"/>).</summary>
    private BitmapHorizon BitmapHorizonLocked() => new(
        // A bit may be cleared on disk only when memory holds every range that may differ: not while resync
        // records (whose bits were cleared when taken) are still short of durable on the peer.
        MayClear: !_state.Streaming || (!_state.Resyncing && _durable >= _lastResyncSeq),
        SafeSeq: _state.Streaming ? _durable : _nextSeq - 1);

    /// <summary>Marks whole activity-log extents dirty (after a crash: what the log names may differ anywhere).</summary>
    public void MarkExtents(IEnumerable<uint> extents)
    {
        lock (_gate)
        {
            foreach (var e in extents)
            {
                _bitmap.Mark((long)e << MetaFile.ExtentShift, MetaFile.ExtentBytes);
            }

            _holesMaySkip = false;
        }
    }

    /// <summary>
    /// Every record with a seq at or below this is durable on the peer or recorded in the bitmap: an activity-log
    /// extent whose records are all at or below it may leave the log once its bitmap page is on disk.
    /// </summary>
    public ulong SafeSeq
    {
        get
        {
            lock (_gate)
            {
                return _state.Streaming ? _durable : _nextSeq - 1;
            }
        }
    }

    /// <summary>The seq of the last record assigned. Read under the volume's ordering lock, which every assignment holds.</summary>
    public ulong LastAssignedSeq => Volatile.Read(ref _nextSeq) - 1;

    /// <summary>Writes every bitmap page that differs from what is on disk, then syncs.</summary>
    public void PersistAll() => _bitmap.PersistAll();

    /// <summary>This node's dirty runs, for a peer about to resync this node (it ORs them into its own bitmap).</summary>
    public List<ulong> DirtyRuns(int maxPairs)
    {
        lock (_gate)
        {
            return _bitmap.EncodeRuns(maxPairs);
        }
    }

    /// <summary>Marks a peer's dirty runs: ranges the peer changed that this node must send back over them.</summary>
    public void MarkRuns(IReadOnlyList<ulong> runs)
    {
        lock (_gate)
        {
            _bitmap.MarkRuns(runs);
            if (runs.Count > 0)
            {
                _holesMaySkip = false;
            }

            SignalChangedLocked();
        }
    }

    /// <summary>Clears the bitmap in memory (a diskless node has nothing to resync from).</summary>
    public void ClearAll()
    {
        lock (_gate)
        {
            _bitmap.Clear();
            SignalChangedLocked();
        }
    }

    /// <summary>Clears the bitmap and persists that (this node was resynced from its peer completely).</summary>
    public void ClearAllAndPersist()
    {
        ClearAll();
        PersistAll();
    }

    public PeerLossPolicy OnPeerLoss { get; }

    public long MaxQueueBytes { get; }

    /// <summary>The link's state, one value read atomically (no lock): status and the volume read it once.</summary>
    public LinkState State => _state;

    /// <summary>The one place the state changes (under <see cref="_gate"/>): by <see cref="LinkState.On"/>.</summary>
    private void MoveLocked(LinkEvent e)
    {
        _state = _state.On(e);
        var reported = _state.Connection;
        if (reported != _reported)
        {
            _reported = reported;
            StateChanged?.Invoke(reported);
        }

        SignalChangedLocked();
    }

    // Completed (and dropped) at the next change a WaitUntilAsync may be waiting for. Guarded by _gate.
    private TaskCompletionSource? _changed;

    /// <summary>
    /// Waits until <paramref name="condition"/> holds, checking it now and again after each change of the link's
    /// state, acknowledgements, queue, bitmap or probes (signalled, not polled). Returns false when
    /// <paramref name="timeout"/> (<see cref="Timeout.InfiniteTimeSpan"/>: none) passes first. The condition runs
    /// outside the link's lock and may read any member.
    /// </summary>
    public async Task<bool> WaitUntilAsync(Func<PeerLink, bool> condition, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var infinite = timeout == Timeout.InfiniteTimeSpan || timeout > TimeSpan.FromDays(24); // WaitAsync takes under 49.7 days
        var started = Stopwatch.GetTimestamp();
        while (true)
        {
            Task changed;
            lock (_gate)
            {
                changed = (_changed ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
            }

            // Taken before the check: a change after the check completes it, so no wakeup is lost.
            if (condition(this))
            {
                return true;
            }

            var left = infinite ? Timeout.InfiniteTimeSpan : timeout - Stopwatch.GetElapsedTime(started);
            if (!infinite && left <= TimeSpan.Zero)
            {
                return false;
            }

            try
            {
                await changed.WaitAsync(left, cancellationToken).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
                return condition(this);
            }
        }
    }

    private void SignalChangedLocked()
    {
        var changed = _changed;
        _changed = null;
        changed?.TrySetResult();
    }

    /// <summary>
    /// Called with the sending side's connection state (connecting, connected, syncsource or ahead) each time it
    /// changes, under the link's lock, so the calls come in the order of the changes (<see cref="ConnectionHistory"/>).
    /// </summary>
    public Action<ConnectionState>? StateChanged { get; set; }

    public bool Streaming => _state.Streaming;

    public bool Ahead => _state.Ahead;

    public bool ResyncActive => _state.Resyncing;

    // The running resync's End marker is queued (TryEndResync) and not taken yet. Guarded by _gate.
    private bool _resyncEndQueued;

    /// <summary>
    /// A resync is begun and its End marker is not queued yet: someone must drive it (<see cref="Volume.RunResyncAsync"/>).
    /// False between <see cref="TryEndResync"/> and the End marker going out, while <see cref="ResyncActive"/> is still true.
    /// </summary>
    public bool ResyncUnfinished
    {
        get
        {
            lock (_gate)
            {
                return _state.Resyncing && !_resyncEndQueued;
            }
        }
    }

    public bool Accepted => _state.Accepted;

    /// <summary>
    /// True when a front-end request must wait before it may enter the volume: the peer is away under the
    /// block policy, or (sync mode) the queue is over its bound. The caller then awaits <see cref="WaitToEnterAsync"/>.
    /// </summary>
    public bool MustWait(long bytes) =>
        // No lock on the write path: a stale answer is harmless. A write that enters while the peer just went away
        // under the block policy is held by Submit anyway, and the sync bound is a soft one.
        MustWaitLocked(bytes);

    public Task WaitToEnterAsync(long bytes, CancellationToken cancellationToken)
    {
        lock (_gate)
        {
            if (!MustWaitLocked(bytes))
            {
                return Task.CompletedTask;
            }

            var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            (_state.Streaming ? _spaceWaiters : _streamWaiters).Add(tcs);
            return tcs.Task.WaitAsync(cancellationToken);
        }
    }

    private bool MustWaitLocked(long bytes)
    {
        var queued = Volatile.Read(ref _queuedBytes);
        return (!_state.Streaming && OnPeerLoss == PeerLossPolicy.Block)
            || (_state.Streaming && Mode == ReplicationMode.Sync && queued > 0 && queued + bytes > MaxQueueBytes);
    }

    /// <summary>
    /// Hands a write (or trim, zero range) to the link. Called under the volume's ordering lock. Returns the
    /// task the front end must also wait on (sync mode), or null.
    /// </summary>
    public WriteWaiter? Submit(JournalRecordKind kind, long offset, long length, ReadOnlySpan<byte> payload, bool fua)
    {
        Volatile.Write(ref _lastAppRecordAt, Stopwatch.GetTimestamp());
        lock (_gate)
        {
            if (!_state.Streaming || _state.Ahead)
            {
                _bitmap.Mark(offset, length);
                return BlockedWaiterLocked();
            }

            if (Mode == ReplicationMode.Async && _queuedBytes + _inflightBytes + Cost(payload.Length) > MaxQueueBytes)
            {
                // Pull ahead: the record is dropped, its range stays dirty, and the resync catches up once the
                // queue has drained. The stream stays a write-ordered prefix until the resync begins.
                MoveLocked(LinkEvent.GoAhead);
                _aheadCount++;
                _announceAhead = true;
                WakeShipperLocked();
                _holesMaySkip = false; // a trim dropped here must reach the target as a zero range
                _bitmap.Mark(offset, length);
                return null;
            }

            WriteWaiter? wait = null;
            if (kind == JournalRecordKind.Write && payload.Length > MaxRecordPayload)
            {
                for (var done = 0; done < payload.Length; done += MaxRecordPayload)
                {
                    var piece = payload.Slice(done, Math.Min(MaxRecordPayload, payload.Length - done));
                    var last = done + piece.Length == payload.Length;
                    wait = EnqueueRecordLocked(kind, offset + done, piece.Length, piece, fua && last, waiter: last);
                }
            }
            else
            {
                wait = EnqueueRecordLocked(kind, offset, length, payload, fua, waiter: true);
            }

            return wait;
        }
    }

    /// <summary>
    /// Marks a range dirty (a local write failed after its record was queued): the resync sends this node's
    /// content of the range again.
    /// </summary>
    public void MarkDirty(long offset, long length)
    {
        lock (_gate)
        {
            _bitmap.Mark(offset, length);
            _holesMaySkip = false; // the peer may hold data where this image has a hole now
            SignalChangedLocked();
        }
    }

    /// <summary>A flush: a barrier in the stream, durable on the peer before the ack in sync mode.</summary>
    public WriteWaiter? SubmitFlush()
    {
        lock (_gate)
        {
            if (!_state.Streaming || _state.Ahead)
            {
                return BlockedWaiterLocked();
            }

            return EnqueueRecordLocked(JournalRecordKind.Flush, 0, 0, default, fua: false, waiter: true);
        }
    }

    private WriteWaiter? BlockedWaiterLocked()
    {
        if (OnPeerLoss != PeerLossPolicy.Block)
        {
            return null;
        }

        var waiter = _waiters.Rent();
        _blocked.Add(waiter);
        return waiter;
    }

    private WriteWaiter? EnqueueRecordLocked(JournalRecordKind kind, long offset, long length, ReadOnlySpan<byte> payload, bool fua, bool waiter)
    {
        var seq = _nextSeq++;
        var item = RentItemLocked();
        item.Header = kind switch
        {
            JournalRecordKind.Write => JournalRecordHeader.ForWrite(seq, (ulong)offset, payload.Length, fua),
            JournalRecordKind.Trim => JournalRecordHeader.ForTrim(seq, (ulong)offset, (ulong)length, fua),
            JournalRecordKind.Zero => JournalRecordHeader.ForZero(seq, (ulong)offset, (ulong)length, fua),
            _ => JournalRecordHeader.ForFlush(seq),
        };
        item.EnqueuedAt = Stopwatch.GetTimestamp();
        if (payload.Length > 0)
        {
            item.Payload = ArrayPool<byte>.Shared.Rent(payload.Length);
            payload.CopyTo(item.Payload);
        }

        _queue.Enqueue(item);
        _queuedBytes += Cost(payload.Length);
        WakeShipperLocked();

        if (!waiter || Mode != ReplicationMode.Sync)
        {
            return null;
        }

        var done = _waiters.Rent();
        if (fua || kind == JournalRecordKind.Flush)
        {
            _durableWaiters.Enqueue((seq, done));
        }
        else
        {
            _appliedWaiters.Enqueue((seq, done));
        }

        return done;
    }

    private void WakeShipperLocked() => _wake.Set();

    /// <summary>A queue entry from the free list (records are the steady state: no allocation per write).</summary>
    private LinkItem RentItemLocked() => _freeItems.TryPop(out var item) ? item : new LinkItem();

    /// <summary>Back to the free list once the item has left the queue (its payload returned first).</summary>
    private void RecycleLocked(LinkItem item)
    {
        ReturnPayload(item);
        if (_freeItems.Count < LocksAndLimits.MaxPooledLinkItems)
        {
            item.Header = default;
            item.EnqueuedAt = 0;
            item.Marker = null;
            item.Probe = null;
            item.Read = null;
            _freeItems.Push(item);
        }
    }

    /// <summary>The seq the next record will get (what a handshake announces as the earliest first_seq).</summary>
    public ulong NextSeq
    {
        get
        {
            lock (_gate)
            {
                return _nextSeq;
            }
        }
    }

    /// <summary>
    /// Opens the gate for a stream the peer has just accepted: from now on writes are queued for it. Returns the
    /// seq of the first record the stream will carry. (Until then writes only mark the bitmap, so a handshake
    /// that hangs on a black-holed link never holds a write.)
    /// </summary>
    public ulong OpenStream()
    {
        lock (_gate)
        {
            MoveLocked(LinkEvent.Open);
            _received = _applied = _durable = _lastSent = _nextSeq - 1;
            ReleaseAllLocked(_streamWaiters);
            return _nextSeq;
        }
    }

    /// <summary>
    /// The peer accepted the handshake. When anything is dirty (or <paramref name="peerInconsistent"/>: a resync
    /// of the peer was cut short), the resync's Begin marker is queued here, under the same lock that opened
    /// the gate, so no new write can reach the peer ahead of it. Returns true when a resync must run.
    /// </summary>
    public bool StreamAccepted(bool fullResync, bool targetFresh = false, bool peerInconsistent = false, string reason = "")
    {
        lock (_gate)
        {
            _resyncReason = reason;
            MoveLocked(LinkEvent.Accept);
            _connects++;
            _holesMaySkip = targetFresh;
            if (fullResync)
            {
                _bitmap.MarkAll();
            }

            if (_bitmap.IsEmpty && !peerInconsistent)
            {
                ReleaseBlockedLocked();
                return false;
            }

            BeginResyncLocked(fullResync);
            return true;
        }
    }

    /// <summary>True while a fresh target may have holes skipped (nothing was ever sent there that a hole must undo).</summary>
    public bool HolesMaySkip
    {
        get
        {
            lock (_gate)
            {
                return _holesMaySkip;
            }
        }
    }

    /// <summary>
    /// Ends the current stream: every queued or unacknowledged record falls back into the bitmap, sync waiters
    /// complete (continue policy: the write is acknowledged as a local write, degraded) or wait for the peer
    /// (block policy), and a running resync stops.
    /// </summary>
    public void CloseStream(Exception? failWaiters = null)
    {
        lock (_gate)
        {
            if (!_state.Streaming)
            {
                return;
            }

            _drainedAtClose = NothingOutstandingLocked();

            if (_state.Accepted)
            {
                _disconnects++;
            }

            MoveLocked(LinkEvent.Close);
            _releaseBlockedAt = 0;
            while (_queue.TryDequeue(out var item))
            {
                if (item.Marker is null && item.Probe is null && item.Read is null && item.Header.Kind != JournalRecordKind.Flush)
                {
                    _bitmap.Mark((long)item.Header.Offset, (long)item.Header.Length);
                }

                RecycleLocked(item);
            }

            _queuedBytes = 0;
            _inflightBytes = 0;
            _unreceived.Clear();
            while (_unacked.TryDequeue(out var sent))
            {
                _bitmap.Mark(sent.Offset, sent.Length);
            }

            _probes.ReturnAll(_bitmap);
            _reads.FailAll();

            foreach (var queue in new[] { _appliedWaiters, _durableWaiters })
            {
                while (queue.TryDequeue(out var w))
                {
                    if (failWaiters is not null)
                    {
                        // No longer primary: a write the peer never acknowledged must not be reported done.
                        w.Done.Fail(failWaiters);
                    }
                    else if (OnPeerLoss == PeerLossPolicy.Block)
                    {
                        _blocked.Add(w.Done);
                    }
                    else
                    {
                        w.Done.Complete();
                    }
                }
            }

            ReleaseAllLocked(_spaceWaiters);
            ReleaseSpaceLocked(); // the stream is gone: resync waiters go on and find it closed
            WakeShipperLocked();
        }

        _al?.NotifyProgress();
    }

    /// <summary>
    /// Fails every waiter (the volume is closing or being demoted with the peer away): front ends get an
    /// error instead of hanging.
    /// </summary>
    public void AbortWaiters(Exception reason)
    {
        lock (_gate)
        {
            foreach (var queue in new[] { _appliedWaiters, _durableWaiters })
            {
                while (queue.TryDequeue(out var w))
                {
                    w.Done.Fail(reason);
                }
            }

            foreach (var blocked in _blocked)
            {
                blocked.Fail(reason);
            }

            _blocked.Clear();
            foreach (var list in new[] { _spaceWaiters, _streamWaiters })
            {
                foreach (var tcs in list)
                {
                    tcs.TrySetException(reason);
                }

                list.Clear();
            }
        }
    }

    /// <summary>
    /// Waits for work for the shipper: fills <paramref name="writer"/> with queued records up to
    /// <paramref name="softLimit"/> uncompressed bytes (whatever is there: group commit), or returns a marker, or
    /// reports idle after <paramref name="idle"/> so the caller can send a keepalive.
    /// </summary>
    public async ValueTask<LinkTake> TakeAsync(JournalBatchWriter writer, int softLimit, TimeSpan idle, CancellationToken cancellationToken)
    {
        while (true)
        {
            ValueTask<bool> wake;
            lock (_gate)
            {
                if (!_state.Streaming)
                {
                    throw new OperationCanceledException("the replication stream was closed");
                }

                if (_state.Accepted && _queue.Count > 0)
                {
                    _announceAhead = false; // the batch carries the flag
                    var take = TakeLocked(writer, softLimit);
                    SignalChangedLocked();
                    return take;
                }

                if (_state.Accepted && _announceAhead)
                {
                    _announceAhead = false;
                    return new LinkTake(0, 0, null, Idle: true, 0, 0);
                }

                wake = _wake.Arm(idle, cancellationToken);
            }

            var woken = await wake.ConfigureAwait(false);
            cancellationToken.ThrowIfCancellationRequested();
            if (!woken)
            {
                return new LinkTake(0, 0, null, Idle: true, 0, 0);
            }
        }
    }

    private LinkTake TakeLocked(JournalBatchWriter writer, int softLimit)
    {
        writer.Reset();
        if (_queue.Peek().Marker is { } marker)
        {
            _queue.Dequeue();
            if (!marker.Begin)
            {
                MoveLocked(LinkEvent.EndResync);
                _releaseBlockedAt = _nextSeq - 1;
                ReleaseBlockedIfDurableLocked();
            }

            return new LinkTake(0, 0, marker, Idle: false, _nextSeq - 1, _queuedBytes);
        }

        if (_queue.Peek().Read is { } read)
        {
            _queue.Dequeue();
            return new LinkTake(0, 0, null, Idle: false, _nextSeq - 1, _queuedBytes, Read: read);
        }

        if (_queue.Peek().Probe is { } probe)
        {
            _queue.Dequeue();
            return new LinkTake(0, 0, null, Idle: false, _nextSeq - 1, _queuedBytes, probe);
        }

        long payloadBytes = 0;
        var records = 0;
        while (_queue.TryPeek(out var item) && item.Marker is null && item.Probe is null && item.Read is null)
        {
            var header = item.Header;
            if (records > 0 && writer.UncompressedLength + header.EncodedLength > softLimit)
            {
                break;
            }

            var payload = item.Payload is null ? ReadOnlySpan<byte>.Empty : item.Payload.AsSpan(0, (int)header.PayloadLength);
            if (!writer.TryAppend(header, payload))
            {
                break;
            }

            _queue.Dequeue();
            _queuedBytes -= Cost((int)header.PayloadLength);
            payloadBytes += header.PayloadLength;
            records++;
            _lastSent = header.Seq;
            _unacked.Enqueue((header.Seq, (long)header.Offset, header.Kind == JournalRecordKind.Flush ? 0 : (long)header.Length, item.EnqueuedAt, header.PayloadLength));
            var cost = Cost((int)header.PayloadLength);
            _unreceived.Enqueue((header.Seq, cost));
            _inflightBytes += cost;
            RecycleLocked(item);
        }

        ReleaseSpaceLocked();
        MaybeLeaveAheadLocked();
        return new LinkTake(records, payloadBytes, null, Idle: false, _nextSeq - 1, _queuedBytes);
    }

    /// <summary>
    /// Leaves ahead once the link has drained: nothing queued and at most <see cref="LocksAndLimits.LeaveAheadInFlight"/> still in flight
    /// (the peer is keeping up again). Until now the peer got a write-ordered prefix; from here the dropped ranges
    /// come back as resync records between a Begin and an End marker (the peer is inconsistent meanwhile), and the
    /// Begin goes first, before any new write.
    /// </summary>
    private void MaybeLeaveAheadLocked()
    {
        if (!_state.Ahead || _queue.Count != 0 || _inflightBytes > LocksAndLimits.LeaveAheadInFlight(MaxQueueBytes))
        {
            return;
        }

        if (!_state.Resyncing && !_bitmap.IsEmpty)
        {
            // One transition: the link reports ahead -> syncsource, never a connected in between.
            _resyncReason = "async link drained after running ahead: the dropped writes";
            MoveLocked(LinkEvent.LeaveAheadIntoResync);
            BeginResyncLocked(full: false);
        }
        else
        {
            MoveLocked(LinkEvent.LeaveAhead);
        }
    }

    /// <summary>The shipper sent a batch: counts for status.</summary>
    public void CountSent(int records, long payloadBytes, long wireBytes)
    {
        Interlocked.Add(ref _records, records);
        Interlocked.Add(ref _payloadBytes, payloadBytes);
        Interlocked.Add(ref _wireBytes, wireBytes);
        Interlocked.Increment(ref _batches);
    }

    /// <summary>A cumulative acknowledgement from the peer. Returns false when it is not plausible (beyond what was sent).</summary>
    public bool OnAck(ulong received, ulong applied, ulong durable)
    {
        lock (_gate)
        {
            if (!_state.Streaming)
            {
                return true;
            }

            if (received > _lastSent || applied > received || durable > applied)
            {
                return false;
            }

            _received = Math.Max(_received, received);
            while (_unreceived.TryPeek(out var r) && r.Seq <= _received)
            {
                _unreceived.Dequeue();
                _inflightBytes -= r.Cost;
            }

            ReleaseSpaceLocked();

            MaybeLeaveAheadLocked();
            _applied = Math.Max(_applied, applied);
            _durable = Math.Max(_durable, durable);
            while (_unacked.TryPeek(out var sent) && sent.Seq <= _durable)
            {
                _unacked.Dequeue();
            }

            while (_appliedWaiters.TryPeek(out var w) && w.Seq <= _applied)
            {
                _appliedWaiters.Dequeue();
                _ackedWaiters.Add(w.Done);
            }

            while (_durableWaiters.TryPeek(out var w) && w.Seq <= _durable)
            {
                _durableWaiters.Dequeue();
                _ackedWaiters.Add(w.Done);
            }

            ReleaseBlockedIfDurableLocked();
            SignalChangedLocked();
        }

        // Outside the lock, and on the thread pool, not inline: a front end's reply is a blocking send under its
        // connection's lock, and a client that stops reading must not stall this volume's ack loop (its silence
        // would read as a dead peer).
        foreach (var done in _ackedWaiters)
        {
            done.Complete();
        }

        _ackedWaiters.Clear();
        _al?.NotifyProgress();
        return true;
    }

    private void ReleaseBlockedIfDurableLocked()
    {
        if (_releaseBlockedAt != 0 && _durable >= _releaseBlockedAt && _bitmap.IsEmpty)
        {
            _releaseBlockedAt = 0;
            ReleaseBlockedLocked();
        }
    }

    /// <summary>
    /// Begins a resync: queues the Begin marker. Returns false when there is nothing to resync or no stream.
    /// </summary>
    public bool BeginResync(bool full)
    {
        lock (_gate)
        {
            if (!_state.Streaming || _state.Ahead)
            {
                return false;
            }

            if (_state.Resyncing)
            {
                return true; // begun when the stream was accepted or when ahead ended
            }

            if (_bitmap.IsEmpty)
            {
                return false;
            }

            BeginResyncLocked(full);
            return true;
        }
    }

    private void BeginResyncLocked(bool full)
    {
        _resyncEndQueued = false;
        MoveLocked(LinkEvent.BeginResync);
        _resyncFull = full;
        _resyncTotal = _bitmap.DirtyBytes;
        _resyncDone = 0;
        _resyncCursor = 0;
        _resyncStarted = Stopwatch.GetTimestamp();
        _queue.Enqueue(new LinkItem { Marker = new LinkMarker(true, _resyncTotal, full, 0), EnqueuedAt = _resyncStarted });
        WakeShipperLocked();
    }

    /// <summary>
    /// Takes the next dirty run for the resync (clearing its bits). Called under the volume's ordering lock,
    /// together with the read of the range and <see cref="SubmitResync"/>, so no write can slip between.
    /// </summary>
    public bool TakeResyncRun(int maxBytes, out long offset, out int length)
    {
        lock (_gate)
        {
            return TakeRunLocked(maxBytes, mayWrap: true, out offset, out length);
        }
    }

    /// <summary>
    /// Takes the next dirty run from the resync cursor (clearing its bits, kept on disk as taken). Without
    /// <paramref name="mayWrap"/>, a run found behind the cursor goes back to the bitmap and nothing is taken.
    /// </summary>
    private bool TakeRunLocked(int maxBytes, bool mayWrap, out long offset, out int length)
    {
        offset = 0;
        length = 0;
        if (!_state.Streaming || !_state.Resyncing || _state.Ahead)
        {
            return false;
        }

        // Cleared in memory; kept set on disk as taken until its records are safe (or a probe settles).
        if (!_bitmap.TakeRun(_resyncCursor, maxBytes, out offset, out length))
        {
            return false;
        }

        if (!mayWrap && offset < _resyncCursor)
        {
            _bitmap.Mark(offset, length);
            return false;
        }

        _resyncCursor = offset + length;
        SignalChangedLocked();
        return true;
    }

    /// <summary>Queues the data (or a zero range when <paramref name="data"/> is empty) of a run taken by <see cref="TakeResyncRun"/>.</summary>
    public void SubmitResync(long offset, int length, ReadOnlySpan<byte> data, bool skip)
    {
        lock (_gate)
        {
            if (!_state.Streaming || !_state.Resyncing)
            {
                _bitmap.Mark(offset, length);
                return;
            }

            _resyncDone += length;
            if (skip)
            {
                return;
            }

            if (data.IsEmpty)
            {
                EnqueueRecordLocked(JournalRecordKind.Zero, offset, length, default, fua: false, waiter: false);
            }
            else
            {
                EnqueueRecordLocked(JournalRecordKind.Write, offset, data.Length, data, fua: false, waiter: false);
            }

            _lastResyncSeq = _nextSeq - 1;
        }
    }

    /// <summary>
    /// Ends a resync when the bitmap is clean: queues the End marker carrying the generation the receiver adopts.
    /// Returns false when bits are still dirty (writes while ahead, or a run given back) and the loop must go on.
    /// </summary>
    public bool TryEndResync(ulong generation)
    {
        lock (_gate)
        {
            if (!_state.Streaming || !_state.Resyncing || _resyncEndQueued)
            {
                return true; // nothing to end, or its End marker is already queued (one End per Begin)
            }

            if (!_bitmap.IsEmpty || _state.Ahead || _probes.AnyUnsettled)
            {
                return false;
            }

            _queue.Enqueue(new LinkItem { Marker = new LinkMarker(false, _resyncTotal, _resyncFull, generation), EnqueuedAt = Stopwatch.GetTimestamp() });
            _lastResync = (_resyncDone, Stopwatch.GetElapsedTime(_resyncStarted).TotalSeconds, _resyncReason, _resyncFull);
            _resyncEndQueued = true;
            _holesMaySkip = false; // only the first sync of a fresh target may skip holes
            WakeShipperLocked();
            return true;
        }
    }

    /// <summary>
    /// Waits until at most <paramref name="fill"/> bytes (and at most <see cref="LocksAndLimits.ResyncFillCap"/>) are queued or in flight to the
    /// peer, or the stream ends: the resync's fill target (how much of its data may stand in front of a new write).
    /// </summary>
    public Task WaitForResyncSpaceAsync(long fill, CancellationToken cancellationToken)
    {
        fill = Math.Min(fill, LocksAndLimits.ResyncFillCap(MaxQueueBytes));
        lock (_gate)
        {
            if (!_state.Streaming || _queuedBytes + _inflightBytes <= fill)
            {
                return Task.CompletedTask;
            }

            var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _resyncSpaceWaiters.Add((fill, tcs));
            return tcs.Task.WaitAsync(cancellationToken);
        }
    }

    /// <summary>True when the application handed the link a write within <paramref name="window"/>.</summary>
    public bool ApplicationBusy(TimeSpan window)
    {
        var last = Volatile.Read(ref _lastAppRecordAt);
        return last != 0 && Stopwatch.GetElapsedTime(last) < window;
    }

    /// <summary>True when everything assigned so far is durable on the peer and nothing is dirty.</summary>
    public bool IsDrained
    {
        get
        {
            lock (_gate)
            {
                return _state.Streaming && NothingOutstandingLocked();
            }
        }
    }

    /// <summary>
    /// Drained now, or the last stream closed drained and nothing was written since (what a clean stop or a
    /// demotion needs to know after the stream is gone).
    /// </summary>
    public bool WasDrained
    {
        get
        {
            lock (_gate)
            {
                return _state.Streaming ? NothingOutstandingLocked() : _drainedAtClose && _bitmap.IsEmpty && _durable == _nextSeq - 1;
            }
        }
    }

    private bool NothingOutstandingLocked() =>
        _state.Accepted && _queue.Count == 0 && _unacked.Count == 0 && _bitmap.IsEmpty && _durable == _nextSeq - 1 && !_state.Resyncing;

    public bool HasDirty
    {
        get
        {
            lock (_gate)
            {
                return !_bitmap.IsEmpty;
            }
        }
    }

    public ReplicationSnapshot Snapshot()
    {
        var al = _al?.Stats ?? default;
        lock (_gate)
        {
            long queuedRecords = 0;
            long queuedBytes = 0;
            long oldest = 0;
            foreach (var item in _queue)
            {
                if (item.Marker is null && item.Probe is null && item.Read is null)
                {
                    queuedRecords++;
                    queuedBytes += item.Header.PayloadLength;
                    if (oldest == 0)
                    {
                        oldest = item.EnqueuedAt;
                    }
                }
            }

            foreach (var sent in _unacked)
            {
                if (sent.Seq > _received)
                {
                    queuedRecords++;
                    queuedBytes += sent.Bytes;
                }
            }

            if (_unacked.TryPeek(out var first))
            {
                oldest = first.EnqueuedAt;
            }

            var now = Stopwatch.GetTimestamp();
            return new ReplicationSnapshot(
                LastSeq: _nextSeq - 1,
                ReceivedSeq: _received,
                AppliedSeq: _applied,
                DurableSeq: _durable,
                QueuedRecords: queuedRecords,
                QueuedBytes: queuedBytes,
                OldestUnackedMicroseconds: oldest == 0 ? 0 : (long)Stopwatch.GetElapsedTime(oldest, now).TotalMicroseconds,
                DirtyBytes: _bitmap.DirtyBytes,
                PayloadBytes: Interlocked.Read(ref _payloadBytes),
                WireBytes: Interlocked.Read(ref _wireBytes),
                Batches: Interlocked.Read(ref _batches),
                Records: Interlocked.Read(ref _records),
                ResyncActive: _state.Resyncing,
                ResyncTotalBytes: _resyncTotal,
                ResyncDoneBytes: _resyncDone,
                ResyncFull: _resyncFull,
                ResyncElapsedSeconds: _resyncStarted == 0 ? 0 : Stopwatch.GetElapsedTime(_resyncStarted, now).TotalSeconds,
                AheadCount: _aheadCount,
                Connects: _connects,
                Disconnects: _disconnects,
                ResyncReason: _resyncReason,
                LastResyncBytes: _lastResync.Bytes,
                LastResyncSeconds: _lastResync.Seconds,
                LastResyncReason: _lastResync.Reason ?? "",
                LastResyncFull: _lastResync.Full,
                ActivityLogHot: al.Hot,
                ActivityLogTransactions: al.Transactions,
                ActivityLogEvictions: al.Evictions);
        }
    }

    // ---- checksum probes (online verify, checksum resync): queued in order with the records --------------

    /// <summary>The peer answers checksum probes (it announced the feature in its handshake reply); set per stream.</summary>
    public bool PeerChecksums
    {
        get => _peerChecksums;
        set
        {
            lock (_gate)
            {
                _peerChecksums = value;
                SignalChangedLocked();
            }
        }
    }

    /// <summary>Probes queued, hash bytes received, and resync bytes not sent because the hashes matched.</summary>
    public (long Requests, long ReplyBytes, long EqualBytes) ChecksumCounters
    {
        get
        {
            lock (_gate)
            {
                return _probes.Counters;
            }
        }
    }

    /// <summary>A checksum resync's probe is not settled yet (the resync cannot end before it is).</summary>
    public bool ResyncProbesOutstanding
    {
        get
        {
            lock (_gate)
            {
                return _probes.AnyUnsettled;
            }
        }
    }

    /// <summary>Why a probe cannot be queued now, or null when it can.</summary>
    public string? ProbeRefusal()
    {
        lock (_gate)
        {
            return ProbeRefusalLocked();
        }
    }

    private string? ProbeRefusalLocked() =>
        !_state.Streaming || !_state.Accepted ? "the peer is not connected"
        : _state.Ahead ? "the link is ahead (async queue overflowed); the peer is behind"
        : !_peerChecksums ? "the peer does not answer checksum requests (an older version)"
        : null;

    /// <summary>
    /// Queues a probe in order with the records. Called under the volume's ordering lock, right after this node
    /// read the range. False (and, for a resync probe, its range back in the bitmap) when there is no usable stream.
    /// For a verify probe, records which chunks may differ legitimately now: dirty in the bitmap, or under a
    /// checksum resync probe that is not settled yet.
    /// </summary>
    public bool TryQueueProbe(ChecksumProbe probe)
    {
        lock (_gate)
        {
            if (ProbeRefusalLocked() is not null || (probe.Resync && !_state.Resyncing))
            {
                if (probe.Resync)
                {
                    _bitmap.Mark(probe.Offset, probe.Length);
                    SignalChangedLocked();
                }

                return false;
            }

            if (!probe.Resync)
            {
                var dirty = new bool[probe.Chunks];
                for (var i = 0; i < dirty.Length; i++)
                {
                    var start = probe.Offset + ((long)i * probe.ChunkBytes);
                    var end = Math.Min(probe.Offset + probe.Length, start + probe.ChunkBytes);
                    for (var c = start >> DirtyBitmap.ChunkShift; c <= (end - 1) >> DirtyBitmap.ChunkShift && !dirty[i]; c++)
                    {
                        dirty[i] = _bitmap.IsSet(c);
                    }

                    dirty[i] |= _probes.OverlapsUnsettled(start, end);
                }

                probe.DirtyAtProbe = dirty;
            }

            _probes.Add(probe);
            probe.SeqBefore = _nextSeq - 1;
            _queue.Enqueue(new LinkItem { Probe = probe, EnqueuedAt = Stopwatch.GetTimestamp() });
            WakeShipperLocked();
            return true;
        }
    }

    /// <summary>The peer's answer to a probe. False when no such probe is outstanding or the hash count is wrong (a protocol violation).</summary>
    public bool OnChecksumReply(ulong id, ReadOnlySpan<byte> hashes)
    {
        lock (_gate)
        {
            return _probes.TryAnswer(id, hashes);
        }
    }

    /// <summary>
    /// A resync probe was compared: its differing ranges go back to the bitmap (the data pass sends them), the rest
    /// counts as done. Ignored when a stream close already put the whole range back.
    /// </summary>
    public void SettleResyncProbe(ChecksumProbe probe, IReadOnlyList<(long Offset, long Length)> differing)
    {
        lock (_gate)
        {
            long differ = 0;
            foreach (var (_, length) in differing)
            {
                differ += length;
            }

            if (!_probes.TrySettle(probe, equalBytes: probe.Length - differ))
            {
                return;
            }

            foreach (var (offset, length) in differing)
            {
                _bitmap.Mark(offset, length);
            }

            if (differ > 0)
            {
                _holesMaySkip = false; // the peer holds data here: a hole on this side must go over as a zero range
            }

            // The equal chunks' bits are clear in memory now. On disk they may clear only once the peer's copy is
            // durable: the peer made it durable with the first fdatasync it ran after hashing, which a durable ack
            // of any record after the probe proves (a superset stays on disk until then, never less).
            _lastResyncSeq = Math.Max(_lastResyncSeq, probe.SeqBefore + 1);
            _resyncDone += probe.Length - differ;
            SignalChangedLocked();
        }
    }

    /// <summary>
    /// Takes the next dirty run for a checksum probe, without wrapping to the start: ranges that a probe found
    /// different are marked behind the cursor and must be left to the data pass, not probed again.
    /// </summary>
    public bool TakeChecksumRun(int maxBytes, out long offset, out int length)
    {
        lock (_gate)
        {
            return TakeRunLocked(maxBytes, mayWrap: false, out offset, out length); // wrapped around: the probing pass is over
        }
    }

    // ---- reads through the peer (a diskless primary, DRBD's on-io-error detach) -----------------------------

    /// <summary>The peer announced it answers ReadRequest frames (set at each accepted handshake).</summary>
    public bool PeerServesReads { get; set; }

    /// <summary>
    /// Queues a read of the peer's image behind every record queued so far: the data it returns includes them.
    /// Fails at once when no stream can carry it.
    /// </summary>
    public Task<byte[]> RequestRead(long offset, int length)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, MaxPeerRead);
        lock (_gate)
        {
            if (!_state.Streaming || !_state.Accepted || !PeerServesReads)
            {
                return Task.FromException<byte[]>(new BlockImageException("the local disk is detached (diskless) and the peer cannot serve reads now", Native.LibC.EIO));
            }

            var read = _reads.Add(offset, length);
            _queue.Enqueue(new LinkItem { Read = read, EnqueuedAt = Stopwatch.GetTimestamp() });
            WakeShipperLocked();
            return read.Done.Task;
        }
    }

    /// <summary>The peer's answer to a read. False when no such read is outstanding or the length is wrong.</summary>
    public bool OnReadReply(ulong id, ReadOnlySpan<byte> data, string error)
    {
        PeerRead? read;
        lock (_gate)
        {
            if (!_reads.TryTake(id, out read))
            {
                return false;
            }
        }

        return PeerReads.Complete(read, data, error);
    }

    private void ReleaseSpaceLocked()
    {
        if (_queuedBytes <= LocksAndLimits.SyncWritersResume(MaxQueueBytes))
        {
            ReleaseAllLocked(_spaceWaiters);
        }

        for (var i = _resyncSpaceWaiters.Count - 1; i >= 0; i--)
        {
            if (!_state.Streaming || _queuedBytes + _inflightBytes <= _resyncSpaceWaiters[i].Fill)
            {
                _resyncSpaceWaiters[i].Done.TrySetResult();
                _resyncSpaceWaiters.RemoveAt(i);
            }
        }
    }

    /// <summary>Writes held while the peer was away (block policy) go on.</summary>
    private void ReleaseBlockedLocked()
    {
        foreach (var waiter in _blocked)
        {
            waiter.Complete();
        }

        _blocked.Clear();
    }

    private static void ReleaseAllLocked(List<TaskCompletionSource> waiters)
    {
        foreach (var tcs in waiters)
        {
            tcs.TrySetResult();
        }

        waiters.Clear();
    }

    private static int Cost(int payloadLength) => Math.Max(payloadLength, LocksAndLimits.MinRecordCost);

    private static void ReturnPayload(LinkItem item)
    {
        if (item.Payload is { } payload)
        {
            item.Payload = null;
            ArrayPool<byte>.Shared.Return(payload);
        }
    }
}
