using System.Buffers;
using System.Diagnostics;

namespace BlockRepl.Core.Replication;

/// <summary>
/// The sending side of replication on a primary: the <see cref="PeerLink"/> (queue, acknowledgements, in-flight
/// ranges, bitmap), the handshake's description of this node, the stream's opening and closing, and the resync
/// driver. <see cref="Volume.AttachPeer"/> creates it; the write path of <see cref="Volume"/> submits to its link.
/// </summary>
/// <remarks>
/// Threading: the volume's ordering lock (<see cref="Volume.OrderLock"/>) and metadata gate
/// (<see cref="Volume.MetaGate"/>) guard what this type changes of the volume, in the order of
/// <see cref="LocksAndLimits"/>; this type has no lock of its own. <see cref="_peerGeneration"/> is read and
/// written under the ordering lock.
/// </remarks>
internal sealed class ReplicationSource
{
    private readonly Volume _volume;
    private ulong _peerGeneration;

    internal ReplicationSource(Volume volume, PeerLink link, ResyncSettings resync)
    {
        _volume = volume;
        Link = link;
        Resync = resync;
    }

    /// <summary>The queue, acknowledgements, in-flight ranges and bitmap of the stream to the peer.</summary>
    internal PeerLink Link { get; }

    /// <summary>The resync rate controller's knobs.</summary>
    internal ResyncSettings Resync { get; }

    /// <summary>True when a stream is open and every write so far is durable on the peer (nothing dirty).</summary>
    internal bool IsDrained => Link.IsDrained;

    /// <summary>True while a replication stream to the peer is open.</summary>
    internal bool Streaming => Link.Streaming;

    /// <summary>
    /// What a handshake must say: identity, generations, and the earliest seq the stream may start at. The gate
    /// opens only at <see cref="StreamAccepted"/>; writes in between go to the bitmap, and if one of them starts a
    /// new generation, the resync's end marker hands the receiver that generation.
    /// </summary>
    internal StreamOpening DescribeForHandshake()
    {
        lock (_volume.OrderLock)
        {
            lock (_volume.MetaGate)
            {
                var metadata = _volume.Metadata;
                return new StreamOpening(Link.NextSeq, metadata.VolumeUuid, metadata.NodeId,
                    new GenerationInfo(metadata.CurrentGeneration, metadata.BitmapGeneration, [.. metadata.HistoryGenerations],
                        metadata.Fresh, metadata.NeedsFullSync));
            }
        }
    }

    /// <summary>The peer accepted: opens the gate (and queues a resync's Begin first when one is due). Returns true when a resync must run.</summary>
    internal bool StreamAccepted(bool fullResync, ulong peerGeneration, bool targetFresh, bool peerInconsistent,
        IReadOnlyList<ulong>? peerDirtyRuns = null, string reason = "")
    {
        _volume.SetSplitBrain(false);
        bool resync;
        lock (_volume.OrderLock)
        {
            _volume.SetBumpPendingLocked(false);
            _peerGeneration = peerGeneration;
            if (_volume.IsDiskless)
            {
                // No local data to send: the peer holds every acknowledged write (a write it had not acknowledged
                // when the stream ended was failed to its client), so nothing is resynced from this node.
                Link.ClearAll();
                fullResync = false;
            }
            else if (peerDirtyRuns is { Count: > 0 })
            {
                // Ranges the peer changed itself: this node's content goes back over them.
                Link.MarkRuns(peerDirtyRuns);
            }

            Link.OpenStream();
            var why = reason;
            if (_volume.RecoveryNote is { } note)
            {
                why = $"{reason}; {note}";
            }

            resync = Link.StreamAccepted(fullResync, targetFresh, peerInconsistent, why);
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
        _volume.ClearRecoveryNote();
        lock (_volume.MetaGate)
        {
            var metadata = _volume.Metadata;
            if (_volume.Role == VolumeRole.Primary && peerGeneration == metadata.CurrentGeneration && metadata.BitmapGeneration != 0)
            {
                metadata.BitmapGeneration = 0;
                _volume.SaveMetadataLocked();
            }
        }
    }

    /// <summary>The stream ended (error, timeout, refusal): what was in flight becomes dirty.</summary>
    internal void StreamClosed()
    {
        lock (_volume.OrderLock)
        {
            if (!Link.Streaming)
            {
                return;
            }

            Link.CloseStream(
                _volume.Role != VolumeRole.Primary ? new VolumeReadOnlyException($"volume {_volume.Name} stopped being primary before its peer acknowledged the write")
                : _volume.IsDiskless ? new BlockImageException($"volume {_volume.Name}: the local disk is detached and the peer went away before it acknowledged the write", Native.LibC.EIO)
                : null);
            lock (_volume.MetaGate)
            {
                if (_volume.Role == VolumeRole.Primary && _peerGeneration == _volume.Metadata.CurrentGeneration)
                {
                    // The peer was at our generation: the next write starts a new one, and the bitmap is relative
                    // to the old one, which is the peer's.
                    _volume.SetBumpPendingLocked(true);
                }
            }
        }
    }

    /// <summary>This node became primary with a new generation: the peer's generation is unknown until the next handshake.</summary>
    internal void ForgetPeerGenerationLocked() => _peerGeneration = 0;

    /// <summary>
    /// Waits until this node is no longer primary, no stream to the peer is open, or everything written is durable
    /// on the peer, at most <paramref name="timeout"/> (signalled by the link and the role, not polled).
    /// </summary>
    internal Task WaitForDrainAsync(TimeSpan timeout, CancellationToken cancellationToken) =>
        WaitUntilAsync(l => _volume.Role != VolumeRole.Primary || !l.Streaming || l.IsDrained, timeout, cancellationToken);

    /// <summary>
    /// Waits until <paramref name="condition"/> holds, checking it now and again at each change of the link
    /// (<see cref="PeerLink.WaitUntilAsync"/>) and of <see cref="Volume.Role"/> (the condition may read both). Returns
    /// false when <paramref name="timeout"/> (<see cref="Timeout.InfiniteTimeSpan"/>: none) passes first.
    /// </summary>
    internal async Task<bool> WaitUntilAsync(Func<PeerLink, bool> condition, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var link = Link;
        var infinite = timeout == Timeout.InfiniteTimeSpan;
        var started = Stopwatch.GetTimestamp();
        while (true)
        {
            var roleChanged = _volume.RoleChanged; // taken before the link checks the condition: a later change completes it
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

    /// <summary>
    /// Runs a resync: every dirty range goes into the stream as a record, read under the ordering lock so no
    /// write can come between the read and the record. Holes are sent as zero ranges (or skipped when the
    /// target is fresh, hence all zeroes already); all-zero data goes as a zero range too.
    /// </summary>
    internal async Task RunResyncAsync(bool full, Action<string> log, CancellationToken cancellationToken)
    {
        var link = Link;
        if (!link.BeginResync(full))
        {
            return;
        }

        var snapshot = link.Snapshot();
        full = snapshot.ResyncFull;
        log($"{(full ? "full sync" : "bitmap resync")} of {snapshot.ResyncTotalBytes} bytes started{(link.HolesMaySkip ? " (target fresh: holes skipped)" : "")}");
        var settings = Resync;
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
                lock (_volume.OrderLock)
                {
                    took = link.TakeResyncRun(runBytes, out var offset, out var length);
                    if (took)
                    {
                        try
                        {
                            SendRunLocked(offset, length, buffer, extents, link.HolesMaySkip);
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
                lock (_volume.MetaGate)
                {
                    generation = _volume.Metadata.CurrentGeneration;
                }

                bool ended;
                lock (_volume.OrderLock)
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
                    _ = Task.Run(() => PersistWhenDrainedAsync(generation, cancellationToken), CancellationToken.None);
                    if (full)
                    {
                        lock (_volume.MetaGate)
                        {
                            if (_volume.Metadata.NeedsFullSync)
                            {
                                _volume.Metadata.NeedsFullSync = false;
                                _volume.SaveMetadataLocked();
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
    private async Task PersistWhenDrainedAsync(ulong generation, CancellationToken cancellationToken)
    {
        var link = Link;
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
            _volume.ReportError($"could not persist the bitmap after the resync: {ex.Message}");
        }
    }

    /// <summary>Reads one resync run from the image and queues it as records (under the ordering lock).</summary>
    private void SendRunLocked(long offset, int length, byte[] buffer, ImageExtent[] extents, bool targetFresh)
    {
        var link = Link;
        var image = _volume.Image;
        var pos = offset;
        var end = offset + length;
        while (pos < end)
        {
            var count = image.GetExtents(pos, end - pos, extents);
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
                    image.Read(pos, data);
                    link.SubmitResync(pos, len, data.IndexOfAnyExcept((byte)0) < 0 ? default : data, skip: false);
                }

                pos = extentEnd;
            }
        }
    }
}
