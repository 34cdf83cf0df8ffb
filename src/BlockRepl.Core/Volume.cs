using System.Collections.Concurrent;

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
    private readonly string _metadataPath;
    private long _nextClientId;
    private int _disposed;
    private volatile VolumeRole _role;
    private volatile DiskState _disk;
    private volatile ConnectionState _connection = ConnectionState.Standalone;

    private Volume(BlockImage image, VolumeMetadata metadata, string metadataPath)
    {
        _image = image;
        _metadata = metadata;
        _metadataPath = metadataPath;
        _flush = new CoalescingFlush(image.Flush);
        _role = StateNames.ParseRole(metadata.Role);
        _disk = StateNames.ParseDisk(metadata.Disk);
    }

    public string Name => _metadata.Name;

    public long Size => _image.Size;

    public string ImagePath => _image.Path;

    public Guid VolumeUuid => _metadata.VolumeUuid;

    public Guid NodeId => _metadata.NodeId;

    public VolumeRole Role => _role;

    public DiskState Disk => _disk;

    /// <summary>Without a peer configured the connection is always standalone.</summary>
    public ConnectionState Connection => _connection;

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

        var metadataPath = options.MetadataPath;
        var metadata = VolumeMetadata.TryLoad(metadataPath);
        var imageExists = File.Exists(options.ImagePath);
        if (metadata is not null && !imageExists)
        {
            throw new InvalidOperationException(
                $"metadata {metadataPath} exists but its image {options.ImagePath} does not; refusing to create an empty image under an existing identity");
        }

        if (metadata is not null && options.SizeBytes != 0 && metadata.SizeBytes != options.SizeBytes)
        {
            throw new InvalidOperationException(
                $"volume {options.Name} is {metadata.SizeBytes} bytes (per {metadataPath}) but --size asks for {options.SizeBytes} bytes; refusing to resize");
        }

        var image = BlockImage.OpenOrCreate(options.ImagePath, options.SizeBytes != 0 ? options.SizeBytes : metadata?.SizeBytes ?? 0);
        try
        {
            if (metadata is null)
            {
                metadata = VolumeMetadata.CreateNew(options.Name, image.Size, options.InitialRole);
                metadata.Save(metadataPath);
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

            return new Volume(image, metadata, metadataPath);
        }
        catch
        {
            image.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Reads a range. A front end may serve one request with several calls (and none for holes), so
    /// it counts the request itself with <see cref="CountRead"/>.
    /// </summary>
    public void Read(long offset, Span<byte> destination)
    {
        try
        {
            _image.Read(offset, destination);
        }
        catch (BlockImageException)
        {
            Counters.Error();
            throw;
        }
    }

    /// <summary>Counts one read request of <paramref name="bytes"/> bytes in <see cref="Counters"/>.</summary>
    public void CountRead(int bytes) => Counters.Read(bytes);

    /// <summary>Writes <paramref name="data"/>; with <paramref name="fua"/> the task completes when it is durable.</summary>
    public ValueTask Write(long offset, ReadOnlySpan<byte> data, bool fua)
    {
        EnsureWritable();
        try
        {
            _image.Write(offset, data);
        }
        catch (BlockImageException)
        {
            Counters.Error();
            throw;
        }

        Counters.Write(data.Length);
        return fua ? new ValueTask(_flush.FlushAsync()) : ValueTask.CompletedTask;
    }

    public ValueTask Trim(long offset, long length, bool fua)
    {
        EnsureWritable();
        RunCounted(() => _image.Trim(offset, length));
        Counters.Trim();
        return fua ? new ValueTask(_flush.FlushAsync()) : ValueTask.CompletedTask;
    }

    /// <summary>
    /// Makes the range read as zeroes. Returns false, having changed nothing, when <paramref name="onlyIfFast"/>
    /// is set and the filesystem cannot zero without writing every byte.
    /// </summary>
    public ValueTask<bool> Zero(long offset, long length, bool mayDeallocate, bool onlyIfFast, bool fua)
    {
        EnsureWritable();
        var done = false;
        RunCounted(() => done = _image.Zero(offset, length, mayDeallocate, onlyIfFast));
        if (!done)
        {
            return ValueTask.FromResult(false);
        }

        Counters.Zero();
        return fua ? AwaitThen(_flush.FlushAsync()) : ValueTask.FromResult(true);

        static async ValueTask<bool> AwaitThen(Task flush)
        {
            await flush.ConfigureAwait(false);
            return true;
        }
    }

    /// <summary>Completes when every write completed before the call is durable.</summary>
    public ValueTask Flush()
    {
        Counters.Flush();
        return new ValueTask(_flush.FlushAsync());
    }

    public void Prefetch(long offset, long length) => _image.Prefetch(offset, length);

    public int GetExtents(long offset, long length, Span<ImageExtent> destination) =>
        _image.GetExtents(offset, length, destination);

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
            _image.Flush();
        }
        finally
        {
            _image.Dispose();
        }
    }

    private void EnsureWritable()
    {
        if (!IsWritable)
        {
            throw new VolumeReadOnlyException($"volume {Name} is {Role.Name()}: it accepts no writes");
        }
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
