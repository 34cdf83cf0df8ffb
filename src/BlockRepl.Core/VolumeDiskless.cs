using BlockRepl.Core.Replication;

namespace BlockRepl.Core;

/// <summary>
/// Local disk failure (DRBD's on-io-error detach): a sync primary whose image fails goes <c>diskless</c> and
/// serves every read and write through its peer; the client sees no error. <see cref="AttachDiskAsync"/> brings
/// a returning disk back by pulling from the peer what it missed.
/// </summary>
public sealed partial class Volume
{
    private volatile bool _diskless;
    private DirtyBitmap? _localMissing; // ranges the local image lacks (written while diskless); under _order
    private int _attaching; // 1 while an attach pulls from the peer

    /// <summary>
    /// Detach on a local I/O error (EIO, ENOSPC) when the peer holds the write (sync mode, connected); otherwise
    /// the client gets the error (`serve --on-io-error detach|pass`).
    /// </summary>
    public bool DetachOnIoError { get; set; } = true;

    /// <summary>Test hook: make every local image operation fail with EIO (see <see cref="BlockImage.InjectFailures"/>).</summary>
    public bool InjectDiskFailures
    {
        get => _image.InjectFailures;
        set => _image.InjectFailures = value;
    }

    /// <summary>Bytes the local image lacks while diskless (what an attach pulls from the peer).</summary>
    public long LocalMissingBytes
    {
        get
        {
            lock (_order)
            {
                return _localMissing?.DirtyBytes ?? 0;
            }
        }
    }

    /// <summary>
    /// Detaching is safe only when the peer holds everything: sync mode, connected, no resync running and nothing
    /// dirty (a sync source that lost its disk mid-resync has data nowhere else; its clients must see the error).
    /// </summary>
    private bool CanDetachLocked() =>
        DetachOnIoError && _role == VolumeRole.Primary && _link is { } link && link.Mode == ReplicationMode.Sync
        && link.State is { Accepted: true, Ahead: false, Resyncing: false } && link.PeerServesReads && !link.HasDirty;

    /// <summary>
    /// Diskless with no connected peer: nothing can hold a change. Checked before the change gets a generation or a
    /// bitmap bit, so a write that fails here leaves no trace.
    /// </summary>
    private void ThrowIfDisklessWithoutPeerLocked()
    {
        if (_diskless && !(_link is { } link && link.State.Accepted))
        {
            Counters.Error();
            throw new BlockImageException($"volume {Name}: the local disk is detached (diskless) and the peer is not connected", Native.LibC.EIO);
        }
    }

    /// <summary>While diskless, a change goes to the peer only: true (skip the local image), or EIO when the peer is away.</summary>
    private bool SkipLocalLocked(long offset, long length, WriteWaiter? peer)
    {
        if (!_diskless)
        {
            return false;
        }

        if (peer is null || !(_link?.Streaming ?? false))
        {
            throw new BlockImageException($"volume {Name}: the local disk is detached (diskless) and the peer is not connected", Native.LibC.EIO);
        }

        _localMissing!.Mark(offset, length);
        return true;
    }

    /// <summary>The local change failed: detach when the peer holds it (its record is queued with a sync waiter).</summary>
    private bool TryDetachLocked(BlockImageException error, WriteWaiter? peer, long offset, long length)
    {
        if (peer is null || !CanDetachLocked())
        {
            return false;
        }

        if (!DetachLocked(error))
        {
            return false;
        }

        _localMissing!.Mark(offset, length);
        return true;
    }

    private bool TryDetachForRead(BlockImageException error)
    {
        lock (_order)
        {
            if (_diskless)
            {
                return true;
            }

            return CanDetachLocked() && DetachLocked(error);
        }
    }

    /// <summary>Goes diskless, once that is recorded in NAME.meta; false (stay attached, the error goes to the client) when it cannot be.</summary>
    private bool DetachLocked(BlockImageException error)
    {
        if (_diskless)
        {
            return true;
        }

        try
        {
            lock (_metaGate)
            {
                // Recorded first, so that a restart never serves this image as up to date: from now on it lacks what
                // goes only to the peer. If even that cannot be written, detaching would be unsafe.
                _metadata.Disk = DiskState.Diskless.Name();
                _metaFile.Save(_metadata);
            }
        }
        catch (IOException ex)
        {
            lock (_metaGate)
            {
                _metadata.Disk = _disk.Name();
            }

            ReportError($"local disk failed ({error.Message}) and NAME.meta cannot record a detach ({ex.Message}): the error goes to the client");
            return false;
        }

        _localMissing ??= new DirtyBitmap(Size);
        _diskless = true;
        _disk = DiskState.Diskless;
        Counters.Error();
        ReportError($"local disk failed ({error.Message}): detached; reads and writes go through the peer (diskless)");
        return true;
    }

    /// <summary>The local half of a FLUSH or FUA: none while diskless; a failing fdatasync detaches when it can.</summary>
    private Task? LocalFlushAsync(WriteWaiter? peer)
    {
        if (_diskless)
        {
            return peer is null
                ? Task.FromException(new BlockImageException($"volume {Name}: the local disk is detached (diskless) and the peer is not connected", Native.LibC.EIO))
                : null;
        }

        return FlushOrDetachAsync(peer);
    }

    private async Task FlushOrDetachAsync(WriteWaiter? peer)
    {
        try
        {
            await _flush.FlushAsync().ConfigureAwait(false);
        }
        catch (BlockImageException ex)
        {
            lock (_order)
            {
                if (peer is null || !CanDetachLocked() || !DetachLocked(ex))
                {
                    throw;
                }

                // Which writes reached the platter before the failed fdatasync is unknowable: the whole image is
                // treated as missing, and an attach pulls all of it.
                _localMissing!.MarkAll();
            }
        }
    }

    private void ReadThroughPeer(long offset, Span<byte> destination)
    {
        var link = _link ?? throw new BlockImageException($"volume {Name}: diskless without a peer", Native.LibC.EIO);
        for (var done = 0; done < destination.Length;)
        {
            var length = Math.Min(PeerLink.MaxPeerRead, destination.Length - done);
            byte[] data;
            try
            {
                data = link.RequestRead(offset + done, length).WaitAsync(LocksAndLimits.PeerReadTimeout).GetAwaiter().GetResult();
            }
            catch (Exception ex) when (ex is not BlockImageException)
            {
                Counters.Error();
                throw new BlockImageException($"volume {Name}: read through the peer failed: {ex.Message}", Native.LibC.EIO, ex);
            }
            catch (BlockImageException)
            {
                Counters.Error();
                throw;
            }

            data.CopyTo(destination[done..]);
            done += length;
        }
    }

    /// <summary>
    /// The local disk is back: pulls from the peer every range written while diskless, flushes, and serves locally
    /// again. Refused (the volume stays diskless) when the disk still fails or the peer cannot serve reads. One attach
    /// runs at a time.
    /// </summary>
    /// <remarks>
    /// Each read is queued under the ordering lock, so the peer's data includes every write before it; a write after
    /// it (diskless: to the peer only) marks its range missing again, and a later round pulls it again. The read is
    /// awaited outside the lock; the volume goes back to its local disk only under the lock, when nothing is missing.
    /// </remarks>
    public async Task<RoleChangeResult> AttachDiskAsync(CancellationToken cancellationToken)
    {
        if (!_diskless)
        {
            return new RoleChangeResult(true, "the local disk is attached");
        }

        if (Interlocked.CompareExchange(ref _attaching, 1, 0) != 0)
        {
            return new RoleChangeResult(false, "an attach of this volume is already running");
        }

        try
        {
            return await PullMissingAsync(_link!, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Volatile.Write(ref _attaching, 0);
        }
    }

    private async Task<RoleChangeResult> PullMissingAsync(PeerLink link, CancellationToken cancellationToken)
    {
        long pulled = 0;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            long offset;
            int length;
            Task<byte[]> read;
            lock (_order)
            {
                if (!_localMissing!.TakeRun(0, PeerLink.MaxPeerRead, out offset, out length))
                {
                    try
                    {
                        _image.Flush();
                    }
                    catch (BlockImageException ex)
                    {
                        return new RoleChangeResult(false, $"the local disk still fails: {ex.Message}");
                    }

                    _diskless = false;
                    _disk = DiskState.UpToDate;
                    lock (_metaGate)
                    {
                        _metadata.Disk = DiskState.UpToDate.Name();
                        _metaFile.Save(_metadata);
                    }

                    Changes.Pulse();

                    return new RoleChangeResult(true, "", MissingBytes: (ulong)pulled);
                }

                read = link.RequestRead(offset, length);
            }

            try
            {
                var data = await read.WaitAsync(LocksAndLimits.PeerReadTimeout, cancellationToken).ConfigureAwait(false);
                lock (_order)
                {
                    _image.Write(offset, data);
                }
            }
            catch (Exception ex) when (ex is BlockImageException or TimeoutException or OperationCanceledException)
            {
                lock (_order)
                {
                    _localMissing.Mark(offset, length);
                }

                return new RoleChangeResult(false, $"attach stopped after {pulled} bytes, the volume stays diskless: {ex.Message}");
            }

            pulled += length;
        }
    }
}
