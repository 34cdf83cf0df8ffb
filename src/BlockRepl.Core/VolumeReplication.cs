using System.Buffers;
using System.Diagnostics;
using BlockRepl.Core.Journal;
using BlockRepl.Core.Replication;

namespace BlockRepl.Core;

/// <summary>What a sender puts in its handshake, captured atomically with opening the stream's gate.</summary>
public sealed record StreamOpening(ulong FirstSeq, Guid VolumeUuid, Guid NodeId, GenerationInfo Generations);

/// <summary>The answer to <see cref="Volume.Promote"/> or <see cref="Volume.DemoteAsync"/>.</summary>
public sealed record RoleChangeResult(bool Done, string Reason, ulong MissingRecords = 0, ulong MissingBytes = 0, ulong NewGeneration = 0, ulong ShippedRecords = 0);

/// <summary>The replication side of <see cref="Volume"/>: the link for sending, the apply path for receiving, roles.</summary>
public sealed partial class Volume
{
    private ResyncSettings _resync = ResyncSettings.Default;
    private ulong _senderLastSeq;
    private ulong _senderUnsentBytes;
    private ulong _appliedSeq;

    /// <summary>Configures a peer: writes are replicated by <paramref name="mode"/> from now on.</summary>
    public void AttachPeer(ReplicationMode mode, PeerLossPolicy onPeerLoss, long maxQueueBytes, ResyncSettings? resync = null)
    {
        _resync = resync ?? ResyncSettings.Default;
        var link = new PeerLink(Size, mode, onPeerLoss, maxQueueBytes);
        // The sending side's state is the volume's connection state while primary (and not in split brain).
        link.StateChanged = state =>
        {
            Changes.Pulse();
            if (_role == VolumeRole.Primary && !_splitBrain)
            {
                ConnectionHistory.Enter(state);
            }
        };
        var al = _activityLogExtents > 0 ? new ActivityLog(Size, _activityLogExtents, _metaFile, _loggedAtOpen) : null;
        link.AttachStore(_metaFile, al);
        var persisted = link.Snapshot().DirtyBytes;
        if (_recoverFromLog && _loggedAtOpen.Length > 0)
        {
            link.MarkExtents(_loggedAtOpen);
            try
            {
                // On disk at once: the log may be rewritten (smaller capacity, evictions) before the resync ends.
                link.PersistAll();
            }
            catch (IOException ex)
            {
                lock (_metaGate)
                {
                    _metadata.NeedsFullSync = true;
                }

                ReportError($"could not persist the recovered bitmap ({ex.Message}): the next resync is a full one");
            }
        }

        if (_recoverFromLog)
        {
            RecoveryNote = $"recovery after a crash as primary: {_loggedAtOpen.Length} activity-log extents ({_loggedAtOpen.Length * (MetaFile.ExtentBytes >> 20)} MiB) "
                + $"and {persisted} bytes of persisted bitmap; {link.Snapshot().DirtyBytes} bytes to resync";
        }
        else if (persisted > 0)
        {
            RecoveryNote = $"{persisted} bytes dirty in the persisted bitmap";
        }

        _link = link;
        _al = al;
        SetReceiverConnection(ConnectionState.Connecting);
    }

    /// <summary>The resync rate controller's knobs (set by <see cref="AttachPeer"/>).</summary>
    internal ResyncSettings Resync => _resync;

    /// <summary>The activity log's capacity in extents (0: off).</summary>
    public int ActivityLogCapacity => _al?.Capacity ?? 0;

    /// <summary>True when <c>resolve --discard-my-data</c> ran and the resync from the peer has not completed.</summary>
    public bool DiscardMyData
    {
        get
        {
            lock (_metaGate)
            {
                return _metadata.DiscardMyData;
            }
        }
    }

    /// <summary>True when a stream is open and every write so far is durable on the peer (nothing dirty).</summary>
    public bool IsReplicationDrained => _link is { } link && link.IsDrained;

    /// <summary>True while a replication stream to the peer is open (sending side).</summary>
    public bool IsStreaming => _link is { } link && link.Streaming;

    /// <summary>
    /// Waits until this node is no longer primary, no stream to the peer is open, or everything written is durable
    /// on the peer, at most <paramref name="timeout"/> (signalled by the link and the role, not polled). Returns
    /// at once without a peer.
    /// </summary>
    public async Task WaitForReplicationDrainAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (_link is not null)
        {
            await WaitUntilAsync(l => _role != VolumeRole.Primary || !l.Streaming || l.IsDrained, timeout, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Waits until <paramref name="condition"/> holds, checking it now and again at each change of the link
    /// (<see cref="PeerLink.WaitUntilAsync"/>) and of <see cref="Role"/> (the condition may read both). Returns false
    /// when <paramref name="timeout"/> (<see cref="Timeout.InfiniteTimeSpan"/>: none) passes first. Needs a peer.
    /// </summary>
    internal async Task<bool> WaitUntilAsync(Func<PeerLink, bool> condition, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var link = _link ?? throw new InvalidOperationException("no peer is configured");
        var infinite = timeout == Timeout.InfiniteTimeSpan;
        var started = Stopwatch.GetTimestamp();
        while (true)
        {
            var roleChanged = RoleChanged; // taken before the link checks the condition: a later change completes it
            var left = infinite ? Timeout.InfiniteTimeSpan : timeout - Stopwatch.GetElapsedTime(started);
            if (!infinite && left < TimeSpan.Zero)
            {
                left = TimeSpan.Zero;
            }

            using var roleFirst = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            var linkWait = link.WaitUntilAsync(condition, left, roleFirst.Token);
            if (await Task.WhenAny(linkWait, roleChanged).ConfigureAwait(false) == linkWait)
            {
                return await linkWait.ConfigureAwait(false);
            }

            await roleFirst.CancelAsync().ConfigureAwait(false);
            try
            {
                return await linkWait.ConfigureAwait(false); // it may have finished meanwhile
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                // the role changed first: check the condition again
            }
        }
    }

    /// <summary>The replication mode when a peer is configured.</summary>
    public ReplicationMode? Mode => _link?.Mode;

    // ---- sending side -------------------------------------------------------------------------------

    /// <summary>
    /// What a handshake must say: identity, generations, and the earliest seq the stream may start at. The gate
    /// opens only at <see cref="StreamAccepted"/>; writes in between go to the bitmap, and if one of them starts a
    /// new generation, the resync's end marker hands the receiver that generation.
    /// </summary>
    internal StreamOpening DescribeForHandshake()
    {
        var link = _link ?? throw new InvalidOperationException($"volume {Name} has no peer configured");
        lock (_order)
        {
            lock (_metaGate)
            {
                return new StreamOpening(link.NextSeq, _metadata.VolumeUuid, _metadata.NodeId,
                    new GenerationInfo(_metadata.CurrentGeneration, _metadata.BitmapGeneration, [.. _metadata.HistoryGenerations],
                        _metadata.Fresh, _metadata.NeedsFullSync));
            }
        }
    }

    /// <summary>The peer accepted: opens the gate (and queues a resync's Begin first when one is due). Returns true when a resync must run.</summary>
    internal bool StreamAccepted(bool fullResync, ulong peerGeneration, bool targetFresh, bool peerInconsistent,
        IReadOnlyList<ulong>? peerDirtyRuns = null, string reason = "")
    {
        _splitBrain = false;
        bool resync;
        lock (_order)
        {
            _bumpPending = false;
            _peerGeneration = peerGeneration;
            if (_diskless)
            {
                // No local data to send: the peer holds every acknowledged write (a write it had not acknowledged
                // when the stream ended was failed to its client), so nothing is resynced from this node.
                _link!.ClearAll();
                fullResync = false;
            }
            else if (peerDirtyRuns is { Count: > 0 })
            {
                // Ranges the peer changed itself: this node's content goes back over them.
                _link!.MarkRuns(peerDirtyRuns);
            }

            _link!.OpenStream();
            var why = reason;
            if (RecoveryNote is { } note)
            {
                why = $"{reason}; {note}";
            }

            resync = _link.StreamAccepted(fullResync, targetFresh, peerInconsistent, why);
        }

        if (!resync)
        {
            MarkInSync(peerGeneration);
        }

        return resync;
    }

    /// <summary>The peer holds this node's current generation and nothing is dirty: the bitmap counts from here.</summary>
    private void MarkInSync(ulong peerGeneration)
    {
        RecoveryNote = null;
        lock (_metaGate)
        {
            if (_role == VolumeRole.Primary && peerGeneration == _metadata.CurrentGeneration && _metadata.BitmapGeneration != 0)
            {
                _metadata.BitmapGeneration = 0;
                _metaFile.Save(_metadata);
            }
        }
    }

    /// <summary>This node's own dirty runs, for the handshake reply of a receiver that will be resynced.</summary>
    internal List<ulong> OwnDirtyRuns(int maxPairs) => _link?.DirtyRuns(maxPairs) ?? [];

    /// <summary>The stream ended (error, timeout, refusal): what was in flight becomes dirty.</summary>
    internal void StreamClosed()
    {
        var link = _link;
        if (link is null)
        {
            return;
        }

        lock (_order)
        {
            if (!link.Streaming)
            {
                return;
            }

            link.CloseStream(
                _role != VolumeRole.Primary ? new VolumeReadOnlyException($"volume {Name} stopped being primary before its peer acknowledged the write")
                : _diskless ? new BlockImageException($"volume {Name}: the local disk is detached and the peer went away before it acknowledged the write", Native.LibC.EIO)
                : null);
            lock (_metaGate)
            {
                if (_role == VolumeRole.Primary && _peerGeneration == _metadata.CurrentGeneration)
                {
                    // The peer was at our generation: the next write starts a new one, and the bitmap is relative
                    // to the old one, which is the peer's.
                    _bumpPending = true;
                }
            }
        }
    }

    internal void SetSplitBrain(bool value)
    {
        _splitBrain = value;
        ConnectionHistory.Enter(Connection);
        Changes.Pulse();
    }

    /// <summary>
    /// Runs a resync: every dirty range goes into the stream as a record, read under the ordering lock so no
    /// write can come between the read and the record. Holes are sent as zero ranges (or skipped when the
    /// target is fresh, hence all zeroes already); all-zero data goes as a zero range too.
    /// </summary>
    internal async Task RunResyncAsync(bool full, Action<string> log, CancellationToken cancellationToken)
    {
        var link = _link!;
        if (!link.BeginResync(full))
        {
            return;
        }

        var snapshot = link.Snapshot();
        full = snapshot.ResyncFull;
        log($"{(full ? "full sync" : "bitmap resync")} of {snapshot.ResyncTotalBytes} bytes started{(link.HolesMaySkip ? " (target fresh: holes skipped)" : "")}");
        var settings = _resync;
        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(settings.IdleRunBytes, settings.BusyRunBytes));
        var extents = new ImageExtent[64];
        var nextRunAt = Stopwatch.GetTimestamp();
        try
        {
            while (true)
            {
                cancellationToken.ThrowIfCancellationRequested();

                // The rate controller: yield to the application while it writes (small runs, little in front of
                // its writes, paced at the floor rate), go full speed when it is idle (capped at the max rate).
                var busy = link.ApplicationBusy(settings.BusyWindow);
                var runBytes = busy ? settings.BusyRunBytes : settings.IdleRunBytes;
                await link.WaitForResyncSpaceAsync(busy ? settings.BusyFillBytes : settings.IdleFillBytes, cancellationToken).ConfigureAwait(false);
                var rate = busy ? settings.MinBytesPerSecond : settings.MaxBytesPerSecond;
                if (rate > 0)
                {
                    var wait = Stopwatch.GetElapsedTime(Stopwatch.GetTimestamp(), nextRunAt);
                    if (wait > TimeSpan.Zero)
                    {
                        await Task.Delay(wait, cancellationToken).ConfigureAwait(false);
                    }

                    nextRunAt = Math.Max(nextRunAt, Stopwatch.GetTimestamp()) + (long)((double)runBytes / rate * Stopwatch.Frequency);
                }

                bool took;
                lock (_order)
                {
                    took = link.TakeResyncRun(runBytes, out var offset, out var length);
                    if (took)
                    {
                        try
                        {
                            SendRunLocked(link, offset, length, buffer, extents, link.HolesMaySkip);
                        }
                        catch (BlockImageException)
                        {
                            link.MarkDirty(offset, length); // the run's bits were cleared when it was taken
                            throw;
                        }
                    }
                }

                if (took)
                {
                    continue;
                }

                if (!link.ResyncActive || !link.Streaming)
                {
                    return; // the stream ended; the bitmap holds what is left
                }

                ulong generation;
                lock (_metaGate)
                {
                    generation = _metadata.CurrentGeneration;
                }

                bool ended;
                lock (_order)
                {
                    ended = link.TryEndResync(generation);
                    if (ended)
                    {
                        _peerGeneration = generation;
                    }
                }

                if (ended)
                {
                    var s = link.Snapshot();
                    log($"{(full ? "full sync" : "bitmap resync")} queued completely: {s.ResyncDoneBytes} bytes in {s.ResyncElapsedSeconds:F1} s ({s.LastResyncReason})");
                    _ = Task.Run(() => PersistWhenDrainedAsync(link, generation, cancellationToken), CancellationToken.None);
                    if (full)
                    {
                        lock (_metaGate)
                        {
                            if (_metadata.NeedsFullSync)
                            {
                                _metadata.NeedsFullSync = false;
                                _metaFile.Save(_metadata);
                            }
                        }
                    }

                    return;
                }

                // Not done: the link is ahead (writes landed in the bitmap; it leaves ahead once the queue drains) or a
                // checksum probe is not settled yet. Go on once one of those changes, or the resync or stream ends.
                await link.WaitUntilAsync(
                    l => !l.Streaming || !l.ResyncActive || (!l.Ahead && (l.HasDirty || !l.ResyncProbesOutstanding)),
                    Timeout.InfiniteTimeSpan, cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>
    /// Once everything the resync sent is durable on the peer, the cleared bits go to disk and the bitmap counts
    /// from the generation the peer now shares (so the next outage starts a bitmap resync, not a full one).
    /// </summary>
    private async Task PersistWhenDrainedAsync(PeerLink link, ulong generation, CancellationToken cancellationToken)
    {
        try
        {
            await link.WaitUntilAsync(l => !l.Streaming || l.IsDrained, TimeSpan.FromMinutes(5), cancellationToken).ConfigureAwait(false);
            if (!link.IsDrained)
            {
                return;
            }

            link.PersistAll();
            MarkInSync(generation);
        }
        catch (OperationCanceledException)
        {
        }
        catch (IOException ex)
        {
            ReportError($"could not persist the bitmap after the resync: {ex.Message}");
        }
    }

    private void SendRunLocked(PeerLink link, long offset, int length, byte[] buffer, ImageExtent[] extents, bool targetFresh)
    {
        var pos = offset;
        var end = offset + length;
        while (pos < end)
        {
            var count = _image.GetExtents(pos, end - pos, extents);
            if (count == 0)
            {
                link.SubmitResync(pos, (int)(end - pos), buffer.AsSpan(0, (int)(end - pos)), skip: false);
                break;
            }

            for (var i = 0; i < count && pos < end; i++)
            {
                var extent = extents[i];
                var extentEnd = Math.Min(end, extent.Offset + extent.Length);
                var len = (int)(extentEnd - pos);
                if (len <= 0)
                {
                    continue;
                }

                if (extent.IsHole)
                {
                    link.SubmitResync(pos, len, default, skip: targetFresh);
                }
                else
                {
                    var data = buffer.AsSpan(0, len);
                    _image.Read(pos, data);
                    link.SubmitResync(pos, len, data.IndexOfAnyExcept((byte)0) < 0 ? default : data, skip: false);
                }

                pos = extentEnd;
            }
        }
    }

    // ---- receiving side -----------------------------------------------------------------------------

    /// <summary>Identity and generations for a receiver's handshake decision.</summary>
    internal StreamOpening DescribeForReceiver()
    {
        lock (_metaGate)
        {
            return new StreamOpening(0, _metadata.VolumeUuid, _metadata.NodeId,
                new GenerationInfo(_metadata.CurrentGeneration, _metadata.BitmapGeneration, [.. _metadata.HistoryGenerations],
                    _metadata.Fresh, _metadata.NeedsFullSync, _metadata.DiscardMyData));
        }
    }

    internal void SetReceiverConnection(ConnectionState state)
    {
        _receiverConnection = state;
        ConnectionHistory.Enter(Connection);
        Changes.Pulse();
    }

    /// <summary>A fresh node takes the identity of the volume it is about to receive.</summary>
    internal void AdoptVolumeUuid(Guid uuid)
    {
        lock (_metaGate)
        {
            _metadata.VolumeUuid = uuid;
            _metaFile.Save(_metadata);
        }
    }

    /// <summary>Applies one replicated record to the image (a secondary's only way to change it).</summary>
    internal void ApplyRecord(in JournalRecordHeader header, ReadOnlySpan<byte> payload)
    {
        // Under the ordering lock: a promotion flips the role under it too, so no replicated write can land
        // after the first write of the new primary.
        lock (_order)
        {
            if (_role != VolumeRole.Secondary)
            {
                throw new VolumeReadOnlyException($"volume {Name} is {Role.Name()}: it applies no replicated writes");
            }

            ApplyRecordLocked(header, payload);
        }
    }

    private void ApplyRecordLocked(in JournalRecordHeader header, ReadOnlySpan<byte> payload)
    {
        var offset = (long)header.Offset;
        var length = (long)header.Length;
        if (header.Kind != JournalRecordKind.Flush && (offset < 0 || length < 0 || offset > Size || length > Size - offset))
        {
            throw new JournalFormatException($"record seq {header.Seq}: {offset}+{length} is outside the {Size}-byte volume");
        }

        switch (header.Kind)
        {
            case JournalRecordKind.Write:
                _image.Write(offset, payload);
                break;
            case JournalRecordKind.Trim:
            case JournalRecordKind.Zero:
                // A trimmed range reads back as zeroes on the primary's image too (hole punch), so the images stay
                // byte-identical only if the replica zeroes it as well.
                _image.Zero(offset, length, mayDeallocate: true, onlyIfFast: false);
                break;
            case JournalRecordKind.Flush:
                break;
            default:
                throw new JournalFormatException($"record seq {header.Seq}: unknown kind {(byte)header.Kind}");
        }
    }

    /// <summary>fdatasync of the image (a replicated flush or FUA write, or the periodic one).</summary>
    internal Task FlushImageAsync() => _flush.FlushAsync();

    internal void NoteSenderProgress(ulong senderLastSeq, ulong senderUnsentBytes, ulong appliedSeq)
    {
        Interlocked.Exchange(ref _senderLastSeq, senderLastSeq);
        Interlocked.Exchange(ref _senderUnsentBytes, senderUnsentBytes);
        Interlocked.Exchange(ref _appliedSeq, appliedSeq);
    }

    /// <summary>What a secondary knows it has not received (from the primary's last announcement).</summary>
    public (ulong Records, ulong Bytes) KnownMissing
    {
        get
        {
            var last = Interlocked.Read(ref _senderLastSeq);
            var applied = Interlocked.Read(ref _appliedSeq);
            return (last > applied ? last - applied : 0, Interlocked.Read(ref _senderUnsentBytes));
        }
    }

    /// <summary>The resync begins: until its end this image is not a usable copy (persisted first).</summary>
    internal void BeginSyncTarget()
    {
        lock (_metaGate)
        {
            _disk = DiskState.Inconsistent;
            _metadata.Disk = DiskState.Inconsistent.Name();
            _metadata.Fresh = false; // from the first resync record on, holes here may not be skipped any more
            _metaFile.Save(_metadata);
        }

        SetReceiverConnection(ConnectionState.SyncTarget);
    }

    /// <summary>The resync ended: flush, adopt the source's generation, up to date again.</summary>
    internal async Task EndSyncTargetAsync(ulong generation, bool full)
    {
        await FlushImageAsync().ConfigureAwait(false);
        lock (_metaGate)
        {
            _disk = DiskState.UpToDate;
            _metadata.Disk = DiskState.UpToDate.Name();
            if (generation != 0)
            {
                _metadata.StartGeneration(generation);
            }

            _metadata.Fresh = false;
            if (full)
            {
                _metadata.NeedsFullSync = false;
            }

            // Everything this node had changed itself (its bitmap, sent to the source at the handshake) is
            // overwritten now: it holds exactly the source's generation.
            _metadata.BitmapGeneration = 0;
            _metadata.DiscardMyData = false;
            _link?.ClearAllAndPersist();
            _metaFile.Save(_metadata);
        }

        RecoveryNote = null;
        SetReceiverConnection(ConnectionState.Connected);
    }

    // ---- roles ----------------------------------------------------------------------------------------

    /// <summary>
    /// secondary -> primary. Refused while a primary is connected to us, or when the disk is not up to date,
    /// unless <paramref name="force"/>. Starts a new generation; the old one becomes the bitmap generation, so
    /// the old primary can later be resynced from this node's bitmap.
    /// </summary>
    public RoleChangeResult Promote(bool force)
    {
        if (_role == VolumeRole.Primary)
        {
            return new RoleChangeResult(true, "already primary");
        }

        var connection = _receiverConnection;
        if (!force && connection is ConnectionState.Connected or ConnectionState.SyncTarget or ConnectionState.Behind)
        {
            return new RoleChangeResult(false, $"the peer is connected and primary (connection {connection.Name()}): demote it first, or use --force");
        }

        if (!force && _disk != DiskState.UpToDate)
        {
            return new RoleChangeResult(false, $"the local disk is {_disk.Name()}, not uptodate: promoting it would serve incomplete data; use --force to promote anyway");
        }

        if (_metadata.Fresh && !force)
        {
            return new RoleChangeResult(false, "this node was created as secondary and never synced: its image holds no data of the volume; use --force to promote anyway");
        }

        var (missingRecords, missingBytes) = KnownMissing;
        ulong generation;
        lock (_order)
        {
            lock (_metaGate)
            {
                var old = _metadata.CurrentGeneration;
                _metadata.StartGeneration(VolumeMetadata.NewGeneration());
                _metadata.BitmapGeneration = old;
                _metadata.Role = VolumeRole.Primary.Name();
                _metadata.Disk = DiskState.UpToDate.Name();
                _metadata.Fresh = false;
                _metadata.CleanShutdown = false;
                _metaFile.Save(_metadata);
                generation = _metadata.CurrentGeneration;
            }

            _disk = DiskState.UpToDate;
            _bumpPending = false;
            _peerGeneration = 0;
            SetRoleLocked(VolumeRole.Primary);
        }

        ConnectionHistory.Enter(Connection);

        return new RoleChangeResult(true, "", missingRecords, missingBytes, generation);
    }

    /// <summary>
    /// primary -> secondary: no new writes from now on; waits (up to <paramref name="timeout"/>) until every
    /// write is durable on the peer, flushes, and records the role. With writes the peer may lack, the image must
    /// never be mistaken for an in-sync copy: with the activity log on, the bitmap names those writes (the records
    /// not acknowledged go back into it) and goes to disk, so the next resync, from whichever node is primary
    /// then, goes over exactly them; without the log the node is marked for a full resync.
    /// </summary>
    public async Task<RoleChangeResult> DemoteAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (_role == VolumeRole.Secondary)
        {
            return new RoleChangeResult(true, "already secondary");
        }

        lock (_order)
        {
            SetRoleLocked(VolumeRole.Secondary); // writes arriving from now on get EPERM
        }

        var link = _link;
        var atStart = link?.Snapshot();
        var shipped = atStart is { } r ? r.LastSeq - r.DurableSeq : 0;
        if (link is not null)
        {
            await link.WaitUntilAsync(l => !l.Streaming || l.IsDrained, timeout, cancellationToken).ConfigureAwait(false);
        }

        await _flush.FlushAsync().ConfigureAwait(false);
        var drained = link is null || link.WasDrained;
        var keepBitmap = !drained && _al is not null;
        link?.AbortWaiters(new VolumeReadOnlyException($"volume {Name} was demoted before its peer acknowledged the write"));
        lock (_metaGate)
        {
            _metadata.Role = VolumeRole.Secondary.Name();
            if (!drained && _al is null)
            {
                _metadata.NeedsFullSync = true; // nothing on disk names what the peer lacks
            }

            _metaFile.Save(_metadata);
        }

        var reason = "";
        if (keepBitmap)
        {
            // The stream closes; its unacknowledged records go back into the bitmap, which goes to disk (a failure
            // there marks the node for a full resync instead).
            PersistOwnChanges();
            bool full;
            lock (_metaGate)
            {
                full = _metadata.NeedsFullSync;
            }

            var own = link!.Snapshot().DirtyBytes;
            reason = full
                ? "the peer had not received every write and the bitmap could not be written: this node needs a full resync before it is in sync again"
                : $"the peer had not received every write: the bitmap names {own} bytes, resynced from the primary (or to the peer if this node is promoted again) at the next connection";
        }
        else if (!drained)
        {
            reason = "the peer had not received every write: this node needs a full resync before it is in sync again";
        }

        SetReceiverConnection(link is null ? ConnectionState.Standalone : ConnectionState.Connecting);
        return new RoleChangeResult(true, reason, ShippedRecords: shipped);
    }

    /// <summary>Writes the bitmap (this node's own changes, for the peer to send back over) and empties the log.</summary>
    private void PersistOwnChanges()
    {
        if (_link is not { } link || _al is null)
        {
            return;
        }

        try
        {
            lock (_order)
            {
                link.CloseStream(new VolumeReadOnlyException($"volume {Name} is no longer primary"));
            }

            link.PersistAll();
            _al.Clear();
        }
        catch (IOException ex)
        {
            // The log on disk still names the extents and the next start recovers from it; meanwhile the next
            // resync must not trust the bitmap.
            lock (_metaGate)
            {
                _metadata.NeedsFullSync = true;
                try
                {
                    _metaFile.Save(_metadata);
                }
                catch (IOException)
                {
                }
            }

            ReportError($"could not persist the bitmap: {ex.Message}");
        }
    }

    /// <summary>
    /// <c>resolve --discard-my-data</c>: this node is the victim of a split brain. It stops being primary, keeps its
    /// bitmap (its own changes since the generation the two share) on disk, and marks itself so that the next
    /// handshake resyncs it from the peer: from both bitmaps when they count from the same generation, in full
    /// otherwise. Nothing is overwritten until the survivor connects.
    /// </summary>
    public RoleChangeResult ResolveDiscardMyData()
    {
        lock (_order)
        {
            SetRoleLocked(VolumeRole.Secondary);
            _bumpPending = false;
            lock (_metaGate)
            {
                _metadata.Role = VolumeRole.Secondary.Name();
                _metadata.DiscardMyData = true;
                if (_al is null || _link is null)
                {
                    _metadata.NeedsFullSync = true;
                }

                _metaFile.Save(_metadata);
            }
        }

        PersistOwnChanges();
        _link?.AbortWaiters(new VolumeReadOnlyException($"volume {Name} is discarding its data"));
        _splitBrain = false;
        SetReceiverConnection(ConnectionState.Connecting);
        var own = _link?.Snapshot().DirtyBytes ?? 0;
        bool full;
        lock (_metaGate)
        {
            full = _metadata.NeedsFullSync;
        }

        return new RoleChangeResult(true, full ? "full" : "bitmap", MissingBytes: (ulong)own);
    }

    /// <summary>The sender found a newer generation on its peer: it steps down and becomes the sync target.</summary>
    internal void StepDownForNewerPeer()
    {
        lock (_order)
        {
            SetRoleLocked(VolumeRole.Secondary);
            lock (_metaGate)
            {
                // This image may hold writes the newer peer never got (in flight at the loss, or the activity
                // log's extents after a crash). With the activity log kept, the bitmap names them: it goes to disk,
                // and the newer peer ORs it into its own at the handshake. Without the log, nothing names them:
                // the resync from the peer must be a full one.
                _metadata.Role = VolumeRole.Secondary.Name();
                if (_al is null || _link is null)
                {
                    _metadata.NeedsFullSync = true;
                }

                _metaFile.Save(_metadata);
            }
        }

        PersistOwnChanges();

        _link?.AbortWaiters(new VolumeReadOnlyException($"volume {Name} stepped down to secondary"));
        SetReceiverConnection(ConnectionState.Connecting);
    }
}
