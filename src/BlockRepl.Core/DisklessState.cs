using System.Buffers;
using BlockRepl.Core.Replication;

namespace BlockRepl.Core;

/// <summary>
/// Local disk failure (DRBD's on-io-error detach): a sync primary whose image fails goes <c>diskless</c> and
/// serves every read and write through its peer; the client sees no error. <see cref="AttachDiskAsync"/> brings
/// a returning disk back by pulling from the peer what it missed.
/// </summary>
/// <remarks>
/// Threading: <see cref="IsDiskless"/> is one volatile flag, set and cleared under the volume's ordering lock
/// (<see cref="Volume.OrderLock"/>), which also guards the ranges the image lacks; NAME.meta changes under the
/// volume's metadata gate. This type has no lock of its own.
/// </remarks>
internal sealed class DisklessState
{
    private readonly Volume _volume;
    private volatile bool _diskless;
    private DirtyBitmap? _localMissing; // ranges the local image lacks (written while diskless); under the ordering lock
    private int _attaching; // 1 while an attach pulls from the peer

    internal DisklessState(Volume volume) => _volume = volume;

    /// <summary>True while the local disk is detached and every read and write goes through the peer.</summary>
    internal bool IsDiskless => _diskless;

    /// <summary>
    /// Detach on a local I/O error (EIO, ENOSPC) when the peer holds the write (sync mode, connected); otherwise
    /// the client gets the error (`serve --on-io-error detach|pass`).
    /// </summary>
    internal bool DetachOnIoError { get; set; } = true;

    /// <summary>Bytes the local image lacks while diskless (what an attach pulls from the peer).</summary>
    internal long LocalMissingBytes
    {
        get
        {
            lock (_volume.OrderLock)
            {
                return _localMissing?.DirtyBytes ?? 0;
            }
        }
    }

    /// <summary>
    /// Detaching is safe only when the peer holds everything: sync mode, connected, no resync running and nothing
    /// dirty (a sync source that lost its disk mid-resync has data nowhere else; its clients must see the error).
    /// </summary>
    internal bool CanDetachLocked() =>
        DetachOnIoError && _volume.Role == VolumeRole.Primary && _volume.Link is { } link && link.Mode == ReplicationMode.Sync
        && link.State is { Accepted: true, Ahead: false, Resyncing: false } && link.PeerServesReads && !link.HasDirty;

    /// <summary>
    /// Diskless with no connected peer: nothing can hold a change. Checked before the change gets a generation or a
    /// bitmap bit, so a write that fails here leaves no trace.
    /// </summary>
    internal void ThrowIfWithoutPeerLocked()
    {
        if (_diskless && !(_volume.Link is { } link && link.State.Accepted))
        {
            _volume.Counters.Error();
            throw new BlockImageException($"volume {_volume.Name}: the local disk is detached (diskless) and the peer is not connected", Native.LibC.EIO);
        }
    }

    /// <summary>While diskless, a change goes to the peer only: true (skip the local image), or EIO when the peer is away.</summary>
    internal bool SkipLocalLocked(long offset, long length, WriteWaiter? peer)
    {
        if (!_diskless)
        {
            return false;
        }

        if (peer is null || !(_volume.Link?.Streaming ?? false))
        {
            throw new BlockImageException($"volume {_volume.Name}: the local disk is detached (diskless) and the peer is not connected", Native.LibC.EIO);
        }

        _localMissing!.Mark(offset, length);
        return true;
    }

    /// <summary>The local change failed: detach when the peer holds it (its record is queued with a sync waiter).</summary>
    internal bool TryDetachLocked(BlockImageException error, WriteWaiter? peer, long offset, long length)
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

    /// <summary>A local read failed: true when the volume is (now) diskless and the read goes through the peer.</summary>
    internal bool TryDetachForRead(BlockImageException error)
    {
        lock (_volume.OrderLock)
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
            lock (_volume.MetaGate)
            {
                // Recorded first, so that a restart never serves this image as up to date: from now on it lacks what
                // goes only to the peer. If even that cannot be written, detaching would be unsafe.
                _volume.Metadata.Disk = DiskState.Diskless.Name();
                _volume.SaveMetadataLocked();
            }
        }
        catch (IOException ex)
        {
            lock (_volume.MetaGate)
            {
                _volume.Metadata.Disk = _volume.Disk.Name();
            }

            _volume.ReportError($"local disk failed ({error.Message}) and NAME.meta cannot record a detach ({ex.Message}): the error goes to the client");
            return false;
        }

        _localMissing ??= new DirtyBitmap(_volume.Size);
        _diskless = true;
        _volume.SetDisk(DiskState.Diskless);
        _volume.Counters.Error();
        _volume.ReportError($"local disk failed ({error.Message}): detached; reads and writes go through the peer (diskless)");
        return true;
    }

    /// <summary>The local half of a FLUSH or FUA: none while diskless; a failing fdatasync detaches when it can.</summary>
    internal Task? LocalFlushAsync(WriteWaiter? peer)
    {
        if (_diskless)
        {
            return peer is null
                ? Task.FromException(new BlockImageException($"volume {_volume.Name}: the local disk is detached (diskless) and the peer is not connected", Native.LibC.EIO))
                : null;
        }

        return FlushOrDetachAsync(peer);
    }

    private async Task FlushOrDetachAsync(WriteWaiter? peer)
    {
        try
        {
            await _volume.FlushImageAsync().ConfigureAwait(false);
        }
        catch (BlockImageException ex)
        {
            lock (_volume.OrderLock)
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

    /// <summary>Reads a range from the peer, in pieces of at most <see cref="PeerLink.MaxPeerRead"/>; EIO when it fails or times out.</summary>
    internal async Task ReadThroughPeerAsync(long offset, Memory<byte> destination)
    {
        var link = _volume.Link ?? throw new BlockImageException($"volume {_volume.Name}: diskless without a peer", Native.LibC.EIO);
        for (var done = 0; done < destination.Length;)
        {
            var length = Math.Min(PeerLink.MaxPeerRead, destination.Length - done);
            byte[] data;
            try
            {
                data = await link.RequestRead(offset + done, length).WaitAsync(LocksAndLimits.PeerReadTimeout).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is not BlockImageException)
            {
                _volume.Counters.Error();
                throw new BlockImageException($"volume {_volume.Name}: read through the peer failed: {ex.Message}", Native.LibC.EIO, ex);
            }
            catch (BlockImageException)
            {
                _volume.Counters.Error();
                throw;
            }

            data.CopyTo(destination[done..]);
            done += length;
        }
    }

    /// <summary>
    /// <see cref="ReadThroughPeerAsync"/> for a caller without an async path (<see cref="Volume.Read"/>): blocks the
    /// calling thread until the peer answers. Front ends do not come here (<see cref="Volume.ReadAsync"/>).
    /// </summary>
    internal void ReadThroughPeer(long offset, Span<byte> destination)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(destination.Length);
        try
        {
            ReadThroughPeerAsync(offset, buffer.AsMemory(0, destination.Length)).GetAwaiter().GetResult();
            buffer.AsSpan(0, destination.Length).CopyTo(destination);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
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
    internal async Task<RoleChangeResult> AttachDiskAsync(CancellationToken cancellationToken)
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
            return await PullMissingAsync(_volume.Link!, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Volatile.Write(ref _attaching, 0);
        }
    }

    private async Task<RoleChangeResult> PullMissingAsync(PeerLink link, CancellationToken cancellationToken)
    {
        var image = _volume.Image;
        long pulled = 0;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            long offset;
            int length;
            Task<byte[]> read;
            lock (_volume.OrderLock)
            {
                if (!_localMissing!.TakeRun(0, PeerLink.MaxPeerRead, out offset, out length))
                {
                    try
                    {
                        image.Flush();
                    }
                    catch (BlockImageException ex)
                    {
                        return new RoleChangeResult(false, $"the local disk still fails: {ex.Message}");
                    }

                    _diskless = false;
                    _volume.SetDisk(DiskState.UpToDate);
                    lock (_volume.MetaGate)
                    {
                        _volume.Metadata.Disk = DiskState.UpToDate.Name();
                        _volume.SaveMetadataLocked();
                    }

                    _volume.Changes.Pulse();

                    return new RoleChangeResult(true, "", MissingBytes: (ulong)pulled);
                }

                read = link.RequestRead(offset, length);
            }

            try
            {
                var data = await read.WaitAsync(LocksAndLimits.PeerReadTimeout, cancellationToken).ConfigureAwait(false);
                lock (_volume.OrderLock)
                {
                    image.Write(offset, data);
                }
            }
            catch (Exception ex) when (ex is BlockImageException or TimeoutException or OperationCanceledException)
            {
                lock (_volume.OrderLock)
                {
                    _localMissing.Mark(offset, length);
                }

                return new RoleChangeResult(false, $"attach stopped after {pulled} bytes, the volume stays diskless: {ex.Message}");
            }

            pulled += length;
        }
    }
}
