using System.Collections.Concurrent;
using BlockRepl.Core.Replication;

namespace BlockRepl.Core;

/// <summary>
/// One replicated block device: the single place where front ends (NBD, iSCSI) meet the local image and,
/// later, the replication sink. Front ends never touch the image or the network directly.
/// </summary>
/// <remarks>
/// Threading: every method may be called from many connections at once. Reads and writes go straight to
/// the image with positional I/O; the only shared mutable state is the counters (interlocked), the client
/// table (concurrent) and the flush rounds (<see cref="CoalescingFlush"/>).
///
/// Buffer contract: <see cref="Write"/> has consumed <c>data</c> when it returns, even if the returned task
/// completes later, so the caller may reuse its receive buffer at once.
/// </remarks>
public sealed class Volume : IDisposable
{
    private readonly BlockImage _image;
    private readonly CoalescingFlush _flush;
    private readonly ConcurrentDictionary<long, VolumeClient> _clients = new();
    private readonly VolumeMetadata _metadata;
    private readonly MetaFile _metaFile;
    private readonly int _activityLogExtents;
    private readonly uint[] _loggedAtOpen;
    private bool _recoverFromLog;
    private ActivityLog? _al;
    private long _nextClientId;
    private int _disposed;
    private volatile VolumeRole _role;
    private volatile DiskState _disk;
    private readonly Lock _order = new();
    private readonly Lock _metaGate = new();
    private readonly DisklessState _diskless;
    private ReplicationSource? _source;
    private bool _bumpPending;
    private volatile bool _splitBrain;
    private volatile string? _lastError;
    private long _lastErrorUnixMs;
    private readonly VolumeVerifier _verifier;

    private Volume(BlockImage image, VolumeMetadata metadata, MetaFile metaFile, int activityLogExtents)
    {
        _image = image;
        _metadata = metadata;
        _metaFile = metaFile;
        _activityLogExtents = activityLogExtents;
        _flush = new CoalescingFlush(image.Flush);
        _verifier = new VolumeVerifier(this, _order, image);
        _diskless = new DisklessState(this);
        Target = new ReplicaTarget(this);
        _role = StateNames.ParseRole(metadata.Role);
        _disk = StateNames.ParseDisk(metadata.Disk);
        _loggedAtOpen = metaFile.ReadActivityLog();
        ConnectionHistory = new ConnectionHistory(metadata.Name, ConnectionState.Standalone);

        if (!metadata.CleanShutdown && metadata.ActivityLogKept)
        {
            // Killed with the activity log kept (as primary, or right after stepping down before its own changes
            // were on disk): what the peer may lack, or this image may hold beyond it, is inside the logged
            // extents or set in the persisted bitmap. Those are resynced; nothing else.
            _recoverFromLog = true;
        }

        if (_role == VolumeRole.Primary)
        {
            if (!metadata.CleanShutdown && !metadata.ActivityLogKept)
            {
                // No activity log: writes may have reached this image and never the peer, and nothing names
                // them. The next resync is a full one.
                metadata.NeedsFullSync = true;
            }

            // Whether or not the stop was clean, the first write before the peer is back starts a new
            // generation, so a peer promoted meanwhile sees both sides moved on (split brain), not "newer".
            _bumpPending = true;
        }

        if (_disk == DiskState.Diskless)
        {
            // The last run detached its failed disk and served through the peer: this image lacks what went only
            // to the peer. It comes back as an outdated secondary that needs a full resync from the peer (promote
            // the peer first); it is never served as an up-to-date primary.
            _role = VolumeRole.Secondary;
            _disk = DiskState.Outdated;
            _bumpPending = false;
            _recoverFromLog = false;
            metadata.Role = VolumeRole.Secondary.Name();
            metadata.Disk = DiskState.Outdated.Name();
            metadata.NeedsFullSync = true;
            StartNote = $"volume {metadata.Name}: the last run detached its failed disk (diskless): the image lacks writes only the peer holds; "
                + "starting as an outdated secondary (promote the peer; this node then gets a full resync)";
        }

        metadata.ActivityLogKept = activityLogExtents > 0;
        metadata.CleanShutdown = false;
        metaFile.Save(metadata);
    }

    /// <summary>A warning about how the volume was opened, for the daemon's log, or null.</summary>
    public string? StartNote { get; }

    /// <summary>What the activity log recovered at this start (after a crash of the primary), or null.</summary>
    public string? RecoveryNote { get; private set; }

    public string Name => _metadata.Name;

    public long Size => _image.Size;

    public string ImagePath => _image.Path;

    public Guid VolumeUuid => _metadata.VolumeUuid;

    public Guid NodeId => _metadata.NodeId;

    public VolumeRole Role => _role;

    // Completed and replaced at each change of _role (SetRoleLocked). Continuations run asynchronously, never
    // under the ordering lock that changes the role.
    private TaskCompletionSource _roleChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>
    /// Completes at the next change of <see cref="Role"/>. Take it before reading the role: a change after that
    /// completes it, so none is missed between the read and the wait.
    /// </summary>
    public Task RoleChanged => Volatile.Read(ref _roleChanged).Task;

    /// <summary>Waits (signalled, not polled) until the volume has <paramref name="role"/>.</summary>
    public async Task WaitForRoleAsync(VolumeRole role, CancellationToken cancellationToken)
    {
        while (true)
        {
            var changed = RoleChanged;
            if (_role == role)
            {
                return;
            }

            await changed.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The one place the role changes after the volume opened (under <see cref="_order"/>); signals <see cref="RoleChanged"/>.</summary>
    private void SetRoleLocked(VolumeRole role)
    {
        if (_role == role)
        {
            return;
        }

        _role = role;
        Changes.Pulse();
        Interlocked.Exchange(ref _roleChanged, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
    }

    /// <summary>Pulsed at every change a person watches (role, disk, connection, last error): <c>status --watch</c>.</summary>
    public ChangeSignal Changes { get; } = new();

    public DiskState Disk => _disk;

    /// <summary>The one place the disk state changes after the volume opened (the caller records it in the metadata as its step needs).</summary>
    internal void SetDisk(DiskState disk)
    {
        _disk = disk;
        Changes.Pulse();
    }

    /// <summary>The one place split brain is entered or left (by either side of replication); the history records the change.</summary>
    internal void SetSplitBrain(bool value)
    {
        _splitBrain = value;
        ConnectionHistory.Enter(Connection);
        Changes.Pulse();
    }

    /// <summary>The connection state of DESIGN.md, from the sending side (a link) or the receiving side.</summary>
    public ConnectionState Connection
    {
        get
        {
            if (_splitBrain)
            {
                return ConnectionState.SplitBrain;
            }

            if (_role == VolumeRole.Primary && Link is { } link)
            {
                return link.State.Connection; // one value: never a mix of two states
            }

            return Target.Connection;
        }
    }

    /// <summary>Every change of <see cref="Connection"/>: a log line each, and how often each state was entered.</summary>
    public ConnectionHistory ConnectionHistory { get; }

    /// <summary>The sending side's link (<see cref="ReplicationSource.Link"/>), when a peer is configured.</summary>
    internal PeerLink? Link => _source?.Link;

    /// <summary>The sending side of replication (<see cref="AttachPeer"/>), when a peer is configured.</summary>
    internal ReplicationSource? Source => _source;

    /// <summary>The receiving side of replication: every volume can be a replica target.</summary>
    internal ReplicaTarget Target { get; }

    public bool HasPeer => Link is not null;

    public ReplicationSnapshot? ReplicationSnapshot => Link?.Snapshot();

    public string? LastError => _lastError;

    /// <summary>Set by <see cref="Dispose"/> when the clean stop could not be recorded (e.g. a full filesystem).</summary>
    public string? ShutdownWarning { get; private set; }

    public long LastErrorUnixMs => Interlocked.Read(ref _lastErrorUnixMs);

    /// <summary>Records the latest error of this volume for status (one line).</summary>
    public void ReportError(string message)
    {
        _lastError = message;
        Interlocked.Exchange(ref _lastErrorUnixMs, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
        Changes.Pulse();
    }

    public GenerationInfo Generations
    {
        get
        {
            lock (_metaGate)
            {
                return new GenerationInfo(_metadata.CurrentGeneration, _metadata.BitmapGeneration, [.. _metadata.HistoryGenerations],
                    _metadata.Fresh, _metadata.NeedsFullSync, _metadata.DiscardMyData);
            }
        }
    }

    /// <summary>Only a primary accepts writes; front ends export a secondary read-only.</summary>
    public bool IsWritable => _role == VolumeRole.Primary;

    public VolumeCounters Counters { get; } = new();

    public IReadOnlyCollection<VolumeClient> Clients => [.. _clients.Values.OrderBy(c => c.Id)];

    /// <summary>
    /// Opens the image and its metadata, creating both when absent. A conflicting size or a metadata file
    /// that belongs to another image is refused with an <see cref="InvalidOperationException"/> whose message
    /// is fit to show a user as is.
    /// </summary>
    public static Volume Open(VolumeOptions options, Action<string>? warn = null)
    {
        if (!VolumeOptions.IsValidName(options.Name))
        {
            throw new InvalidOperationException(
                $"volume name '{options.Name}' is not valid: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'");
        }

        if (options.ActivityLogExtents != 0 && options.ActivityLogExtents is < ActivityLog.MinCapacity or > MetaFile.MaxAlExtents)
        {
            throw new InvalidOperationException(
                $"activity log of {options.ActivityLogExtents} extents: use 0 (off) or {ActivityLog.MinCapacity}..{MetaFile.MaxAlExtents} (4 MiB each)");
        }

        var metadataPath = options.MetadataPath;
        var opened = MetaFile.TryOpen(metadataPath);
        var metadata = opened?.Metadata;
        var metaFile = opened?.File;
        var imageExists = File.Exists(options.ImagePath);
        if (metadata is not null && !imageExists)
        {
            metaFile!.Dispose();
            throw new InvalidOperationException(
                $"metadata {metadataPath} exists but its image {options.ImagePath} does not; refusing to create an empty image under an existing identity");
        }

        if (metadata is not null && options.SizeBytes != 0 && metadata.SizeBytes != options.SizeBytes)
        {
            metaFile!.Dispose();
            throw new InvalidOperationException(
                $"volume {options.Name} is {metadata.SizeBytes} bytes (per {metadataPath}) but --size asks for {options.SizeBytes} bytes; refusing to resize");
        }

        BlockImage image;
        try
        {
            image = BlockImage.OpenOrCreate(options.ImagePath, options.SizeBytes != 0 ? options.SizeBytes : metadata?.SizeBytes ?? 0);
        }
        catch
        {
            metaFile?.Dispose();
            throw;
        }

        try
        {
            if (metadata is null)
            {
                metadata = VolumeMetadata.CreateNew(options.Name, image.Size, options.InitialRole);
                metaFile = MetaFile.Create(metadataPath, metadata);
            }
            else if (metadata.SizeBytes != image.Size)
            {
                throw new InvalidOperationException(
                    $"image {options.ImagePath} is {image.Size} bytes but {metadataPath} records {metadata.SizeBytes}; refusing to serve a volume whose files disagree");
            }
            else if (metadata.Name != options.Name)
            {
                throw new InvalidOperationException($"{metadataPath} belongs to volume '{metadata.Name}', not '{options.Name}'");
            }
            else if (StateNames.ParseRole(metadata.Role) != options.InitialRole)
            {
                warn?.Invoke($"volume {options.Name}: --role {options.InitialRole.Name()} ignored; {metadataPath} records role {metadata.Role}");
            }

            var volume = new Volume(image, metadata, metaFile!, options.ActivityLogExtents);
            if (volume.StartNote is { } note)
            {
                warn?.Invoke(note);
            }

            return volume;
        }
        catch
        {
            image.Dispose();
            metaFile?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads a range into a buffer the caller keeps until the task completes. From the local image it completes
    /// synchronously and allocates nothing; while the volume is diskless the read goes through the peer and
    /// completes when the peer answers (no thread waits for it). A front end may serve one request with several
    /// calls (and none for holes), so it counts the request itself with <see cref="CountRead"/>.
    /// </summary>
    public ValueTask ReadAsync(long offset, Memory<byte> destination) =>
        TryReadLocal(offset, destination.Span) ? ValueTask.CompletedTask : new ValueTask(_diskless.ReadThroughPeerAsync(offset, destination));

    /// <summary>
    /// Reads a range from the local image. False, with <paramref name="destination"/> not filled, when the range
    /// must be read through the peer (the volume is diskless, or went diskless on this read's failure): the
    /// caller reads it with <see cref="ReadAsync"/> into a buffer it can keep. A local failure that does not
    /// detach throws <see cref="BlockImageException"/>.
    /// </summary>
    public bool TryReadLocal(long offset, Span<byte> destination)
    {
        if (_diskless.IsDiskless)
        {
            return false;
        }

        try
        {
            _image.Read(offset, destination);
            return true;
        }
        catch (BlockImageException ex) when (_diskless.TryDetachForRead(ex))
        {
            return false;
        }
        catch (BlockImageException)
        {
            Counters.Error();
            throw;
        }
    }

    /// <summary>
    /// Reads a range into a span. While diskless this blocks the calling thread until the peer answers: front ends
    /// use <see cref="TryReadLocal"/> and <see cref="ReadAsync"/> instead; this is for callers without an async path.
    /// </summary>
    public void Read(long offset, Span<byte> destination)
    {
        if (!TryReadLocal(offset, destination))
        {
            _diskless.ReadThroughPeer(offset, destination);
        }
    }

    /// <summary>Counts one read request of <paramref name="bytes"/> bytes in <see cref="Counters"/>.</summary>
    public void CountRead(int bytes) => Counters.Read(bytes);

    /// <summary>
    /// Writes <paramref name="data"/>; the task completes when the write is acknowledged by the replication mode
    /// (with <paramref name="fua"/>: durable locally, and on the peer in sync mode).
    /// </summary>
    public ValueTask Write(long offset, ReadOnlySpan<byte> data, bool fua)
    {
        EnsureWritable();
        var link = Link;
        if (link is not null && link.MustWait(data.Length))
        {
            // The peer is away under the block policy, or the sync queue is full: copy the data (the caller's
            // buffer is reused once we return) and enter when the link lets us.
            var copy = data.ToArray();
            return WriteAfterWait(link, offset, copy, fua);
        }

        return WriteNow(offset, data, fua);
    }

    private async ValueTask WriteAfterWait(PeerLink link, long offset, byte[] copy, bool fua)
    {
        await link.WaitToEnterAsync(copy.Length, CancellationToken.None).ConfigureAwait(false);
        await WriteNow(offset, copy, fua).ConfigureAwait(false);
    }

    private ValueTask WriteNow(long offset, ReadOnlySpan<byte> data, bool fua)
    {
        var al = _al;
        if (al is not null && !al.TryAcquire(offset, data.Length))
        {
            // A extent not in the activity log yet: it is logged (durably) before the write may land.
            return WriteAfterLog(al, offset, data.ToArray(), fua);
        }

        return WriteHeld(al, offset, data, fua);
    }

    private async ValueTask WriteAfterLog(ActivityLog al, long offset, byte[] copy, bool fua)
    {
        await AcquireLogAsync(al, offset, copy.Length).ConfigureAwait(false);
        await WriteHeld(al, offset, copy, fua).ConfigureAwait(false);
    }

    /// <summary>Waits until the range's extents are logged and held (a failed wait holds nothing).</summary>
    private static Task AcquireLogAsync(ActivityLog al, long offset, long length) => al.AcquireAsync(offset, length);

    /// <summary>The write with its activity-log extents held (when the log is on): ordering lock, record, pwrite.</summary>
    private ValueTask WriteHeld(ActivityLog? al, long offset, ReadOnlySpan<byte> data, bool fua)
    {
        WriteWaiter? peer = null;
        ulong seq = 0;
        try
        {
            lock (_order)
            {
                EnsureWritable();
                _diskless.ThrowIfWithoutPeerLocked();
                BeforeChangeLocked();

                // The record goes to the shipper first, so sending overlaps the local pwrite; both happen under the
                // ordering lock, so the seq order is the local write order.
                peer = Link?.Submit(Journal.JournalRecordKind.Write, offset, data.Length, data, fua);
                seq = Link?.LastAssignedSeq ?? 0;
                try
                {
                    if (!_diskless.SkipLocalLocked(offset, data.Length, peer))
                    {
                        _image.Write(offset, data);
                    }
                }
                catch (BlockImageException ex) when (_diskless.TryDetachLocked(ex, peer, offset, data.Length))
                {
                    // The local disk failed; the peer has the write (sync): served through it from now on.
                }
                catch (BlockImageException)
                {
                    // The client gets the error; the peer may get the data. The range is marked dirty, so the resync
                    // sends this image's content there again and the two converge.
                    Link?.MarkDirty(offset, data.Length);
                    Counters.Error();
                    throw;
                }
            }
        }
        finally
        {
            al?.Release(offset, data.Length, seq);
        }

        Counters.Write(data.Length);
        return Acknowledge(peer, fua);
    }

    /// <summary>
    /// Runs a trim or zero range in pieces of at most <see cref="ActivityLog.MaxRequestExtents"/> extents, each
    /// with its extents held in the activity log (a whole-disk trim must not need the whole disk logged at once).
    /// </summary>
    private async ValueTask<bool> InLoggedPieces(long offset, long length, Func<long, long, ValueTask<bool>> piece)
    {
        var al = _al!;
        var all = true;
        const long pieceBytes = ActivityLog.MaxRequestExtents * MetaFile.ExtentBytes;
        var pos = offset;
        var end = offset + length;
        while (pos < end)
        {
            var next = Math.Min(end, (pos / pieceBytes + 1) * pieceBytes);
            var len = next - pos;
            if (!al.TryAcquire(pos, len))
            {
                await AcquireLogAsync(al, pos, len).ConfigureAwait(false);
            }

            ValueTask<bool> step;
            try
            {
                step = piece(pos, len);
            }
            finally
            {
                al.Release(pos, len, Link?.LastAssignedSeq ?? 0);
            }

            if (!await step.ConfigureAwait(false))
            {
                if (pos == offset)
                {
                    return false; // nothing changed (a fast zero the filesystem cannot do)
                }

                all = false;
            }

            pos = next;
        }

        return all;
    }

    public ValueTask Trim(long offset, long length, bool fua)
    {
        EnsureWritable();
        var link = Link;
        if (link is not null && link.MustWait(0))
        {
            return TrimAfterWait(link, offset, length, fua);
        }

        return TrimLogged(offset, length, fua);
    }

    private async ValueTask TrimAfterWait(PeerLink link, long offset, long length, bool fua)
    {
        await link.WaitToEnterAsync(0, CancellationToken.None).ConfigureAwait(false);
        await TrimLogged(offset, length, fua).ConfigureAwait(false);
    }

    private ValueTask TrimLogged(long offset, long length, bool fua)
    {
        if (_al is null)
        {
            return TrimNow(offset, length, fua);
        }

        var run = InLoggedPieces(offset, length, async (o, l) =>
        {
            await TrimNow(o, l, fua).ConfigureAwait(false);
            return true;
        });
        return run.IsCompletedSuccessfully ? ValueTask.CompletedTask : new ValueTask(run.AsTask());
    }

    private ValueTask TrimNow(long offset, long length, bool fua)
    {
        WriteWaiter? peer;
        lock (_order)
        {
            EnsureWritable();
            _diskless.ThrowIfWithoutPeerLocked();
            BeforeChangeLocked();
            peer = Link?.Submit(Journal.JournalRecordKind.Trim, offset, length, default, fua);
            try
            {
                if (!_diskless.SkipLocalLocked(offset, length, peer))
                {
                    RunCounted(() => _image.Trim(offset, length));
                }
            }
            catch (BlockImageException ex) when (_diskless.TryDetachLocked(ex, peer, offset, length))
            {
            }
            catch (BlockImageException)
            {
                Link?.MarkDirty(offset, length);
                throw;
            }
        }

        Counters.Trim();
        return Acknowledge(peer, fua);
    }

    /// <summary>What the write's caller awaits: the peer's acknowledgement (a pooled waiter, awaited once) and, for FUA, the local flush.</summary>
    private ValueTask Acknowledge(WriteWaiter? peer, bool fua)
    {
        var local = fua ? _diskless.LocalFlushAsync(peer) : null;
        return (peer, local) switch
        {
            (null, null) => ValueTask.CompletedTask,
            (null, { } l) => new ValueTask(l),
            ({ } p, null) => p.AsValueTask(),
            ({ } p, { } l) => new ValueTask(Task.WhenAll(p.AsValueTask().AsTask(), l)),
        };
    }

    /// <summary>
    /// Makes the range read as zeroes. Returns false, having changed nothing, when <paramref name="onlyIfFast"/>
    /// is set and the filesystem cannot zero without writing every byte.
    /// </summary>
    public ValueTask<bool> Zero(long offset, long length, bool mayDeallocate, bool onlyIfFast, bool fua)
    {
        EnsureWritable();
        var link = Link;
        if (link is not null && link.MustWait(0))
        {
            return ZeroAfterWait(link, offset, length, mayDeallocate, onlyIfFast, fua);
        }

        return ZeroLogged(offset, length, mayDeallocate, onlyIfFast, fua);
    }

    private async ValueTask<bool> ZeroAfterWait(PeerLink link, long offset, long length, bool mayDeallocate, bool onlyIfFast, bool fua)
    {
        await link.WaitToEnterAsync(0, CancellationToken.None).ConfigureAwait(false);
        return await ZeroLogged(offset, length, mayDeallocate, onlyIfFast, fua).ConfigureAwait(false);
    }

    private ValueTask<bool> ZeroLogged(long offset, long length, bool mayDeallocate, bool onlyIfFast, bool fua) =>
        _al is null
            ? ZeroNow(offset, length, mayDeallocate, onlyIfFast, fua)
            : InLoggedPieces(offset, length, (o, l) => ZeroNow(o, l, mayDeallocate, onlyIfFast, fua));

    private ValueTask<bool> ZeroNow(long offset, long length, bool mayDeallocate, bool onlyIfFast, bool fua)
    {
        var done = false;
        WriteWaiter? peer = null;
        lock (_order)
        {
            EnsureWritable();
            _diskless.ThrowIfWithoutPeerLocked();
            BeforeChangeLocked(); // the new generation is on disk before the change it covers
            if (_diskless.IsDiskless)
            {
                // Diskless: the zero range goes to the peer only (it always zeroes, whatever the hint).
                peer = Link?.Submit(Journal.JournalRecordKind.Zero, offset, length, default, fua);
                if (!_diskless.SkipLocalLocked(offset, length, peer))
                {
                    throw new BlockImageException($"volume {Name}: the local disk is detached and the peer is away", Native.LibC.EIO);
                }

                done = true;
            }
            else
            {
                try
                {
                    RunCounted(() => done = _image.Zero(offset, length, mayDeallocate, onlyIfFast));
                }
                catch (BlockImageException ex) when (_diskless.CanDetachLocked())
                {
                    peer = Link?.Submit(Journal.JournalRecordKind.Zero, offset, length, default, fua);
                    if (!_diskless.TryDetachLocked(ex, peer, offset, length))
                    {
                        throw;
                    }

                    done = true;
                }
                catch (BlockImageException)
                {
                    Link?.MarkDirty(offset, length); // part of the range may have changed: resync it
                    throw;
                }

                if (done && peer is null)
                {
                    peer = Link?.Submit(Journal.JournalRecordKind.Zero, offset, length, default, fua);
                }
            }
        }

        if (!done)
        {
            return ValueTask.FromResult(false);
        }

        Counters.Zero();
        var ack = Acknowledge(peer, fua);
        return ack.IsCompletedSuccessfully ? ValueTask.FromResult(true) : AwaitThen(ack);

        static async ValueTask<bool> AwaitThen(ValueTask ack)
        {
            await ack.ConfigureAwait(false);
            return true;
        }
    }

    /// <summary>
    /// Completes when every write completed before the call is durable (in sync mode on the peer too; in
    /// async mode the flush is a barrier in the stream).
    /// </summary>
    public ValueTask Flush()
    {
        Counters.Flush();
        WriteWaiter? peer = null;
        if (Link is { } link && IsWritable)
        {
            lock (_order)
            {
                peer = link.SubmitFlush();
            }
        }

        var local = _diskless.LocalFlushAsync(peer);
        return (peer, local) switch
        {
            (null, null) => ValueTask.CompletedTask,
            (null, { } l) => new ValueTask(l),
            ({ } p, null) => p.AsValueTask(),
            ({ } p, { } l) => new ValueTask(Task.WhenAll(p.AsValueTask().AsTask(), l)),
        };
    }

    public void Prefetch(long offset, long length)
    {
        if (!_diskless.IsDiskless)
        {
            _image.Prefetch(offset, length);
        }
    }

    public int GetExtents(long offset, long length, Span<ImageExtent> destination)
    {
        if (_diskless.IsDiskless)
        {
            // The local extent map is stale: claim data everywhere (never a hole that is not one).
            destination[0] = new ImageExtent(offset, Math.Min(length, Size - offset), IsHole: false);
            return 1;
        }

        return _image.GetExtents(offset, length, destination);
    }

    public IDisposable AttachClient(string frontEnd, string remote)
    {
        var id = Interlocked.Increment(ref _nextClientId);
        _clients[id] = new VolumeClient(id, frontEnd, remote, DateTimeOffset.UtcNow);
        return new ClientLease(this, id);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        try
        {
            if (_diskless.IsDiskless)
            {
                // The metadata says diskless: the next start comes back as an outdated secondary.
                ShutdownWarning = $"volume {Name}: stopped while diskless; its image lacks {LocalMissingBytes} bytes that only the peer holds";
                return;
            }

            try
            {
                _image.Flush();
            }
            catch (BlockImageException ex)
            {
                ShutdownWarning = $"volume {Name}: the final fdatasync failed ({ex.Message}); the next start treats the stop as a crash";
                return;
            }

            try
            {
                var persisted = false;
                if (Link is { } link)
                {
                    // Whatever is still in flight falls into the bitmap, and the whole bitmap goes to disk: a clean
                    // stop then needs no activity log, and the next start knows exactly what the peer lacks.
                    lock (_order)
                    {
                        link.CloseStream(new VolumeReadOnlyException($"volume {Name} is closing"));
                    }

                    link.PersistAll();
                    _al?.Clear();
                    persisted = true;
                }

                lock (_metaGate)
                {
                    _metadata.CleanShutdown = persisted || _role == VolumeRole.Secondary || Link is null || _metadata.NeedsFullSync;
                    _metaFile.Save(_metadata);
                }
            }
            catch (IOException ex)
            {
                // The file on disk still says "not a clean stop": the next start recovers from the activity log
                // (or, without one, resyncs in full), which is safe. The data itself was flushed above.
                ShutdownWarning = $"volume {Name}: could not record the clean stop in {_metaFile.Path} ({ex.Message}); the next start treats it as a crash";
            }
        }
        finally
        {
            Link?.AbortWaiters(new VolumeReadOnlyException($"volume {Name} is closing"));
            _image.Dispose();
            _metaFile.Dispose();
        }
    }

    private void EnsureWritable()
    {
        if (!IsWritable)
        {
            throw new VolumeReadOnlyException($"volume {Name} is {Role.Name()}: it accepts no writes");
        }
    }

    /// <summary>
    /// Called under the ordering lock before every change: the first change after the peer was lost (or after
    /// a crash) starts a new generation, so the peer can later tell what happened (DRBD waits for the first
    /// write too, so a primary that only restarted is not taken for a split brain).
    /// </summary>
    private void BeforeChangeLocked()
    {
        if (!_bumpPending || (Link is { } link && link.Streaming))
        {
            return;
        }

        lock (_metaGate)
        {
            var old = _metadata.CurrentGeneration;
            var oldBitmap = _metadata.BitmapGeneration;
            var oldFull = _metadata.NeedsFullSync;
            _metadata.StartGeneration(VolumeMetadata.NewGeneration());
            if (Link is null)
            {
                // Nothing tracks what changes from here on: a later peer needs everything.
                _metadata.BitmapGeneration = 0;
                _metadata.NeedsFullSync = true;
            }
            else if (_metadata.BitmapGeneration == 0)
            {
                // In sync until now: the bitmap (persisted, or named by the activity log) is relative to the
                // generation the peer has. A bitmap generation already set stays: the bitmap still counts from there.
                _metadata.BitmapGeneration = old;
            }

            try
            {
                _metaFile.Save(_metadata);
            }
            catch (IOException ex) when (ex is not BlockImageException)
            {
                // The new generation must be on disk before the first write it covers: refuse the write.
                _metadata.CurrentGeneration = old;
                _metadata.HistoryGenerations.Remove(old);
                _metadata.BitmapGeneration = oldBitmap;
                _metadata.NeedsFullSync = oldFull;
                Counters.Error();
                throw new BlockImageException($"volume {Name}: cannot record a new generation in {_metaFile.Path}: {ex.Message}",
                    ex.HResult == unchecked((int)0x80070070) || ex.Message.Contains("No space", StringComparison.Ordinal) ? Native.LibC.ENOSPC : Native.LibC.EIO, ex);
            }
        }

        _bumpPending = false;
    }

    private void RunCounted(Action action)
    {
        try
        {
            action();
        }
        catch (BlockImageException)
        {
            Counters.Error();
            throw;
        }
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

        var connection = Target.Connection;
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

            SetDisk(DiskState.UpToDate);
            _bumpPending = false;
            _source?.ForgetPeerGenerationLocked();
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

        var link = Link;
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

        Target.SetConnection(link is null ? ConnectionState.Standalone : ConnectionState.Connecting);
        return new RoleChangeResult(true, reason, ShippedRecords: shipped);
    }

    /// <summary>Writes the bitmap (this node's own changes, for the peer to send back over) and empties the log.</summary>
    private void PersistOwnChanges()
    {
        if (Link is not { } link || _al is null)
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
                if (_al is null || Link is null)
                {
                    _metadata.NeedsFullSync = true;
                }

                _metaFile.Save(_metadata);
            }
        }

        PersistOwnChanges();
        Link?.AbortWaiters(new VolumeReadOnlyException($"volume {Name} is discarding its data"));
        _splitBrain = false;
        Target.SetConnection(ConnectionState.Connecting);
        var own = Link?.Snapshot().DirtyBytes ?? 0;
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
                if (_al is null || Link is null)
                {
                    _metadata.NeedsFullSync = true;
                }

                _metaFile.Save(_metadata);
            }
        }

        PersistOwnChanges();

        Link?.AbortWaiters(new VolumeReadOnlyException($"volume {Name} stepped down to secondary"));
        Target.SetConnection(ConnectionState.Connecting);
    }

    // ---- replication: the sending side (ReplicationSource) and the receiving side (ReplicaTarget) ----------

    /// <summary>Configures a peer: writes are replicated by <paramref name="mode"/> from now on.</summary>
    public void AttachPeer(ReplicationMode mode, PeerLossPolicy onPeerLoss, long maxQueueBytes, ResyncSettings? resync = null)
    {
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

        _source = new ReplicationSource(this, link, resync ?? ResyncSettings.Default);
        _al = al;
        Target.SetConnection(ConnectionState.Connecting);
    }

    /// <summary>The resync rate controller's knobs (set by <see cref="AttachPeer"/>).</summary>
    internal ResyncSettings Resync => _source?.Resync ?? ResyncSettings.Default;

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
    public bool IsReplicationDrained => _source is { } source && source.IsDrained;

    /// <summary>True while a replication stream to the peer is open (sending side).</summary>
    public bool IsStreaming => _source is { } source && source.Streaming;

    /// <summary>
    /// Waits until this node is no longer primary, no stream to the peer is open, or everything written is durable
    /// on the peer, at most <paramref name="timeout"/> (signalled by the link and the role, not polled). Returns
    /// at once without a peer.
    /// </summary>
    public async Task WaitForReplicationDrainAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (_source is { } source)
        {
            await source.WaitForDrainAsync(timeout, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The replication mode when a peer is configured.</summary>
    public ReplicationMode? Mode => Link?.Mode;

    /// <summary>What a secondary knows it has not received (from the primary's last announcement).</summary>
    public (ulong Records, ulong Bytes) KnownMissing => Target.KnownMissing;

    /// <summary>fdatasync of the image (a replicated flush or FUA write, the periodic one, or the local half of a flush).</summary>
    internal Task FlushImageAsync() => _flush.FlushAsync();

    // ---- local disk failure: DisklessState --------------------------------------------------------------

    /// <inheritdoc cref="DisklessState.DetachOnIoError"/>
    public bool DetachOnIoError
    {
        get => _diskless.DetachOnIoError;
        set => _diskless.DetachOnIoError = value;
    }

    /// <summary>Test hook: make every local image operation fail with EIO (see <see cref="BlockImage.InjectFailures"/>).</summary>
    public bool InjectDiskFailures
    {
        get => _image.InjectFailures;
        set => _image.InjectFailures = value;
    }

    /// <inheritdoc cref="DisklessState.LocalMissingBytes"/>
    public long LocalMissingBytes => _diskless.LocalMissingBytes;

    /// <inheritdoc cref="DisklessState.AttachDiskAsync"/>
    public Task<RoleChangeResult> AttachDiskAsync(CancellationToken cancellationToken) => _diskless.AttachDiskAsync(cancellationToken);

    // ---- the engine's surface: what ReplicationSource, ReplicaTarget and DisklessState reach of this volume ----
    // Internal and no wider; the locks keep their place in the order of LocksAndLimits (they stay this type's).

    /// <summary>The ordering lock (<see cref="LocksAndLimits"/>, lock 1): seq order = local write order, role flips, diskless state.</summary>
    internal Lock OrderLock => _order;

    /// <summary>The metadata gate (<see cref="LocksAndLimits"/>, lock 2): <see cref="Metadata"/> and its saves.</summary>
    internal Lock MetaGate => _metaGate;

    /// <summary>The volume's metadata; read and changed only under <see cref="MetaGate"/>.</summary>
    internal VolumeMetadata Metadata => _metadata;

    /// <summary>Writes <see cref="Metadata"/> to NAME.meta (crash-safe); the caller holds <see cref="MetaGate"/>.</summary>
    internal void SaveMetadataLocked() => _metaFile.Save(_metadata);

    /// <summary>The local image.</summary>
    internal BlockImage Image => _image;

    /// <summary>True while the local disk is detached (<see cref="DisklessState"/>).</summary>
    internal bool IsDiskless => _diskless.IsDiskless;

    /// <summary>Whether the next change starts a new generation (<see cref="BeforeChangeLocked"/>); under the ordering lock.</summary>
    internal void SetBumpPendingLocked(bool pending) => _bumpPending = pending;

    /// <summary>The recovery the note describes is over (the peer is in sync, or this node was resynced).</summary>
    internal void ClearRecoveryNote() => RecoveryNote = null;

    // ---- online verify and checksum probes: VolumeVerifier ---------------------------------------------

    /// <summary>Default chunk a verify compares (and reports differences in).</summary>
    public const int DefaultVerifyChunk = 64 * 1024;

    /// <summary>Chunk a checksum resync compares: a differing byte costs this much data on the wire.</summary>
    public const int ChecksumResyncChunk = 64 * 1024;

    /// <summary>Largest range one probe covers (<see cref="LocksAndLimits.MaxProbeBytes"/>).</summary>
    public const int MaxProbeBytes = LocksAndLimits.MaxProbeBytes;

    /// <summary>The last verify since the daemon started, or null.</summary>
    public VerifyResult? LastVerify => _verifier.LastVerify;

    /// <inheritdoc cref="VolumeVerifier.VerifyAsync"/>
    public Task<VerifyResult> VerifyAsync(int chunkBytes, bool repair, Action<string> log, CancellationToken cancellationToken) =>
        _verifier.VerifyAsync(chunkBytes, repair, log, cancellationToken);

    /// <inheritdoc cref="VolumeVerifier.RunChecksumPassAsync"/>
    internal Task RunChecksumPassAsync(bool full, Action<string> log, CancellationToken cancellationToken) =>
        _verifier.RunChecksumPassAsync(full, log, cancellationToken);

    /// <inheritdoc cref="VolumeVerifier.HashRangeForPeer"/>
    internal byte[] HashRangeForPeer(long offset, int length, int chunkBytes, byte[] buffer) =>
        _verifier.HashRangeForPeer(offset, length, chunkBytes, buffer);

    /// <inheritdoc cref="VolumeVerifier.Merge"/>
    internal static List<VolumeRange> Merge(IReadOnlyList<long> sortedChunkOffsets, int chunkBytes, long size) =>
        VolumeVerifier.Merge(sortedChunkOffsets, chunkBytes, size);

    /// <inheritdoc cref="VolumeVerifier.HashChunks"/>
    internal static byte[] HashChunks(ReadOnlySpan<byte> data, int chunkBytes) => VolumeVerifier.HashChunks(data, chunkBytes);

    private sealed class ClientLease(Volume volume, long id) : IDisposable
    {
        public void Dispose() => volume._clients.TryRemove(id, out _);
    }
}

/// <summary>A write reached a volume that is not primary.</summary>
public sealed class VolumeReadOnlyException : InvalidOperationException
{
    public VolumeReadOnlyException(string message) : base(message) { }

    public VolumeReadOnlyException() { }

    public VolumeReadOnlyException(string message, Exception inner) : base(message, inner) { }
}
