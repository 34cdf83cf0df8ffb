using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace BlockRepl.Core;

/// <summary>
/// What <c>NAME.meta</c> holds beside the image: identity, size, role, disk state and generations.
/// </summary>
/// <remarks>
/// Stored as JSON (readable with <c>strings NAME.meta | head</c>) in the double-buffered record slots of
/// <see cref="MetaFile"/>, beside the activity log and the dirty bitmap.
/// </remarks>
public sealed class VolumeMetadata
{
    public const int CurrentFormatVersion = 2;

    public int FormatVersion { get; set; } = CurrentFormatVersion;

    public required Guid VolumeUuid { get; set; }

    public required Guid NodeId { get; init; }

    public required string Name { get; init; }

    public required long SizeBytes { get; init; }

    public required string Role { get; set; }

    public required string Disk { get; set; }

    /// <summary>Current generation: a new random value when a primary loses its peer or a node is promoted.</summary>
    public ulong CurrentGeneration { get; set; }

    /// <summary>
    /// The generation the dirty bitmap is relative to: the bitmap names every range where this image may differ
    /// from the image of that generation. 0 while the pair is in sync (the bitmap is then relative to the
    /// current generation, which the peer shares).
    /// </summary>
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

    /// <summary>
    /// The session that last opened this file kept the activity log: after a crash, what the log and the persisted
    /// bitmap name is all that may differ from the peer. False: a crash of a primary costs a full resync.
    /// </summary>
    public bool ActivityLogKept { get; set; }

    /// <summary>
    /// Set by <c>blockrepl resolve --discard-my-data</c> on the victim of a split brain: at the next connection
    /// this node gives up its changes and is resynced from its peer (from both bitmaps when they share a base).
    /// </summary>
    public bool DiscardMyData { get; set; }

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
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(VolumeMetadata))]
internal sealed partial class MetadataJsonContext : JsonSerializerContext;
