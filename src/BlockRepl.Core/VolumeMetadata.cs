using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlockRepl.Core;

/// <summary>
/// What <c>NAME.meta</c> holds beside the image: identity, size, role, disk state and generations.
/// </summary>
/// <remarks>
/// The file is JSON so an operator can read it. Every save is crash-safe: the new content goes to
/// <c>NAME.meta.tmp</c>, is fsynced, renamed over <c>NAME.meta</c>, and the directory is fsynced, so a
/// crash leaves either the old or the new file, never a torn one. (The dirty bitmap and activity log,
/// which change often, will live in their own checksummed slots, not in this file.)
/// </remarks>
public sealed class VolumeMetadata
{
    public const int CurrentFormatVersion = 1;

    public int FormatVersion { get; init; } = CurrentFormatVersion;

    public required Guid VolumeUuid { get; set; }

    public required Guid NodeId { get; init; }

    public required string Name { get; init; }

    public required long SizeBytes { get; init; }

    public required string Role { get; set; }

    public required string Disk { get; set; }

    /// <summary>Current generation: a new random value when a primary loses its peer or a node is promoted.</summary>
    public ulong CurrentGeneration { get; set; }

    /// <summary>The generation the dirty bitmap is relative to (0: no bitmap).</summary>
    public ulong BitmapGeneration { get; set; }

    /// <summary>Earlier current generations, newest first, at most <see cref="HistoryLength"/>.</summary>
    public List<ulong> HistoryGenerations { get; init; } = [];

    /// <summary>True for a node created as secondary that has never been synced from a primary.</summary>
    public bool Fresh { get; set; }

    public const int HistoryLength = 4;

    /// <summary>
    /// False while a daemon serves the volume; true only after a clean stop that left nothing unshipped. A
    /// primary that finds it false at start has lost track of what its peer may lack.
    /// </summary>
    public bool CleanShutdown { get; set; }

    /// <summary>
    /// This image may hold writes its peer never received and no bitmap names them (a primary that crashed,
    /// or was demoted with writes unshipped): the next resync between the pair must be a full one.
    /// </summary>
    public bool NeedsFullSync { get; set; }

    /// <summary>Makes <paramref name="generation"/> current, pushing the old current into the history.</summary>
    public void StartGeneration(ulong generation)
    {
        if (CurrentGeneration != 0 && CurrentGeneration != generation)
        {
            HistoryGenerations.Remove(CurrentGeneration);
            HistoryGenerations.Insert(0, CurrentGeneration);
            if (HistoryGenerations.Count > HistoryLength)
            {
                HistoryGenerations.RemoveRange(HistoryLength, HistoryGenerations.Count - HistoryLength);
            }
        }

        CurrentGeneration = generation;
    }

    public static VolumeMetadata CreateNew(string name, long sizeBytes, VolumeRole role) => new()
    {
        VolumeUuid = Guid.NewGuid(),
        NodeId = Guid.NewGuid(),
        Name = name,
        SizeBytes = sizeBytes,
        Role = role.Name(),
        Disk = DiskState.UpToDate.Name(),
        CurrentGeneration = NewGeneration(),
        Fresh = role == VolumeRole.Secondary,
    };

    public static ulong NewGeneration()
    {
        Span<byte> bytes = stackalloc byte[8];
        ulong value;
        do
        {
            RandomNumberGenerator.Fill(bytes);
            value = BitConverter.ToUInt64(bytes);
        }
        while (value == 0);
        return value;
    }

    public static VolumeMetadata? TryLoad(string path)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        VolumeMetadata? meta;
        try
        {
            meta = JsonSerializer.Deserialize(File.ReadAllBytes(path), MetadataJsonContext.Default.VolumeMetadata);
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"metadata {path} is not valid: {ex.Message}", ex);
        }

        if (meta is null)
        {
            throw new InvalidDataException($"metadata {path} is empty");
        }

        if (meta.FormatVersion != CurrentFormatVersion)
        {
            throw new InvalidDataException($"metadata {path} has format version {meta.FormatVersion}; this build reads {CurrentFormatVersion}");
        }

        // Validate the state words now, so a hand-edited file fails at start with a clear reason.
        _ = StateNames.ParseRole(meta.Role);
        _ = StateNames.ParseDisk(meta.Disk);
        return meta;
    }

    public void Save(string path)
    {
        var tmp = path + ".tmp";
        var bytes = JsonSerializer.SerializeToUtf8Bytes(this, MetadataJsonContext.Default.VolumeMetadata);
        using (var stream = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            stream.Write(bytes);
            stream.Flush(flushToDisk: true);
        }

        File.Move(tmp, path, overwrite: true);
        SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
    }

    private static void SyncDirectory(string directory)
    {
        // fsync on the directory makes the rename durable. Some filesystems refuse fsync on a directory;
        // the rename is then as durable as they make it.
        var fd = Native.LibC.open(directory, Native.LibC.O_RDONLY | Native.LibC.O_DIRECTORY);
        if (fd >= 0)
        {
            _ = Native.LibC.fsync(fd);
            _ = Native.LibC.close(fd);
        }
    }
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(VolumeMetadata))]
internal sealed partial class MetadataJsonContext : JsonSerializerContext;
