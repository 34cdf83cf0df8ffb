namespace BlockRepl.Core;

/// <summary>How a volume is opened: where its files are and what to create when they are absent.</summary>
public sealed record VolumeOptions
{
    public required string Name { get; init; }

    /// <summary>Path of the raw image; the metadata sits beside it as NAME.meta.</summary>
    public required string ImagePath { get; init; }

    /// <summary>Size for a new image; 0 to accept whatever an existing image holds.</summary>
    public long SizeBytes { get; init; }

    /// <summary>Role for newly created metadata. Afterwards the role recorded in NAME.meta wins.</summary>
    public VolumeRole InitialRole { get; init; } = VolumeRole.Primary;

    /// <summary>
    /// Activity-log capacity in 4 MiB extents (default 1024: 4 GiB of recently written area); 0 turns the log off,
    /// and a crash of the primary then costs a full resync.
    /// </summary>
    public int ActivityLogExtents { get; init; } = DefaultActivityLogExtents;

    public const int DefaultActivityLogExtents = 1024;

    public const int MinActivityLogExtents = 64;

    public string MetadataPath => Path.Combine(Path.GetDirectoryName(Path.GetFullPath(ImagePath))!, Name + ".meta");

    /// <summary>Volume names become NBD export names and file names: keep them to a safe alphabet.</summary>
    public static bool IsValidName(string name) =>
        name.Length is > 0 and <= 64 && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.') && name[0] != '.';
}
