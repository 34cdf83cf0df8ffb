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

    // The words themselves live once, in Core's StateNames; these invert ToWire above (a CLI path, not a hot one).
    public static string Word(WireRole role) => Word<VolumeRole, WireRole>(role, ToWire, StateNames.Name);

    public static string Word(WireDisk disk) => Word<DiskState, WireDisk>(disk, ToWire, StateNames.Name);

    public static string Word(WireConnection state) => Word<ConnectionState, WireConnection>(state, ToWire, StateNames.Name);

    public static string Word(WireMode mode) => mode switch
    {
        WireMode.Sync => "sync",
        WireMode.Async => "async",
        _ => "none",
    };

    private static string Word<TCore, TWire>(TWire wire, Func<TCore, TWire> toWire, Func<TCore, string> name)
        where TCore : struct, Enum
        where TWire : struct, Enum
    {
        foreach (var value in Enum.GetValues<TCore>())
        {
            if (EqualityComparer<TWire>.Default.Equals(toWire(value), wire))
            {
                return name(value);
            }
        }

        return "unknown";
    }
}
