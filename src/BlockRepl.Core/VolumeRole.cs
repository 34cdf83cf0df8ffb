namespace BlockRepl.Core;

/// <summary>The states of DESIGN.md. Their lowercase names are what status --json prints.</summary>
public enum VolumeRole
{
    Primary,
    Secondary,
}

public enum DiskState
{
    UpToDate,
    Outdated,
    Inconsistent,
    Diskless,
}

public enum ConnectionState
{
    Standalone,
    Connecting,
    Connected,
    SyncSource,
    SyncTarget,
    Ahead,
    Behind,
    SplitBrain,
}

public static class StateNames
{
    public static string Name(this VolumeRole role) => role switch
    {
        VolumeRole.Primary => "primary",
        VolumeRole.Secondary => "secondary",
        _ => throw new ArgumentOutOfRangeException(nameof(role)),
    };

    public static string Name(this DiskState disk) => disk switch
    {
        DiskState.UpToDate => "uptodate",
        DiskState.Outdated => "outdated",
        DiskState.Inconsistent => "inconsistent",
        DiskState.Diskless => "diskless",
        _ => throw new ArgumentOutOfRangeException(nameof(disk)),
    };

    public static string Name(this ConnectionState connection) => connection switch
    {
        ConnectionState.Standalone => "standalone",
        ConnectionState.Connecting => "connecting",
        ConnectionState.Connected => "connected",
        ConnectionState.SyncSource => "syncsource",
        ConnectionState.SyncTarget => "synctarget",
        ConnectionState.Ahead => "ahead",
        ConnectionState.Behind => "behind",
        ConnectionState.SplitBrain => "splitbrain",
        _ => throw new ArgumentOutOfRangeException(nameof(connection)),
    };

    public static VolumeRole ParseRole(string text) => text switch
    {
        "primary" => VolumeRole.Primary,
        "secondary" => VolumeRole.Secondary,
        _ => throw new FormatException($"unknown role '{text}' (expected primary or secondary)"),
    };

    public static DiskState ParseDisk(string text) => text switch
    {
        "uptodate" => DiskState.UpToDate,
        "outdated" => DiskState.Outdated,
        "inconsistent" => DiskState.Inconsistent,
        "diskless" => DiskState.Diskless,
        _ => throw new FormatException($"unknown disk state '{text}'"),
    };
}
