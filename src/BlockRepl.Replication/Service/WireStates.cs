using BlockRepl.Core;
using BlockRepl.Core.Replication;
using WireConnection = BlockRepl.Replication.V1.ConnectionState;
using WireDisk = BlockRepl.Replication.V1.DiskState;
using WireMode = BlockRepl.Replication.V1.ReplicationMode;
using WireRole = BlockRepl.Replication.V1.VolumeRole;

namespace BlockRepl.Replication.Service;

/// <summary>Maps Core's states to the proto enums and back to the exact lowercase words of DESIGN.md.</summary>
internal static class WireStates
{
    public static WireRole ToWire(VolumeRole role) => role == VolumeRole.Primary ? WireRole.Primary : WireRole.Secondary;

    public static WireDisk ToWire(DiskState disk) => disk switch
    {
        DiskState.UpToDate => WireDisk.Uptodate,
        DiskState.Outdated => WireDisk.Outdated,
        DiskState.Inconsistent => WireDisk.Inconsistent,
        DiskState.Diskless => WireDisk.Diskless,
        _ => WireDisk.Unspecified,
    };

    public static WireConnection ToWire(ConnectionState state) => state switch
    {
        ConnectionState.Standalone => WireConnection.Standalone,
        ConnectionState.Connecting => WireConnection.Connecting,
        ConnectionState.Connected => WireConnection.Connected,
        ConnectionState.SyncSource => WireConnection.Syncsource,
        ConnectionState.SyncTarget => WireConnection.Synctarget,
        ConnectionState.Ahead => WireConnection.Ahead,
        ConnectionState.Behind => WireConnection.Behind,
        ConnectionState.SplitBrain => WireConnection.Splitbrain,
        _ => WireConnection.Unspecified,
    };

    public static WireMode ToWire(ReplicationMode? mode) => mode switch
    {
        ReplicationMode.Sync => WireMode.Sync,
        ReplicationMode.Async => WireMode.Async,
        _ => WireMode.Unspecified,
    };

    public static string Word(WireRole role) => role switch
    {
        WireRole.Primary => "primary",
        WireRole.Secondary => "secondary",
        _ => "unknown",
    };

    public static string Word(WireDisk disk) => disk switch
    {
        WireDisk.Uptodate => "uptodate",
        WireDisk.Outdated => "outdated",
        WireDisk.Inconsistent => "inconsistent",
        WireDisk.Diskless => "diskless",
        _ => "unknown",
    };

    public static string Word(WireConnection state) => state switch
    {
        WireConnection.Standalone => "standalone",
        WireConnection.Connecting => "connecting",
        WireConnection.Connected => "connected",
        WireConnection.Syncsource => "syncsource",
        WireConnection.Synctarget => "synctarget",
        WireConnection.Ahead => "ahead",
        WireConnection.Behind => "behind",
        WireConnection.Splitbrain => "splitbrain",
        _ => "unknown",
    };

    public static string Word(WireMode mode) => mode switch
    {
        WireMode.Sync => "sync",
        WireMode.Async => "async",
        _ => "none",
    };
}
