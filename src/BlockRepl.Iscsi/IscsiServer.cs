using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using BlockRepl.Core.Hosting;
using Microsoft.Extensions.Logging;

namespace BlockRepl.Iscsi;

/// <summary>A target and its logical unit, with the sessions logged in to it.</summary>
internal sealed class IscsiTargetState(IscsiTarget target)
{
    public IscsiTarget Target { get; } = target;

    public ScsiLogicalUnit Unit { get; } = new(target.Volume);

    public ConcurrentDictionary<ScsiNexus, IscsiConnection> Sessions { get; } = new();
}

/// <summary>
/// Accepts iSCSI initiators on the shared <see cref="ConnectionHost"/> (the same model as the NBD server:
/// blocking sockets, a thread per connection, a connection cap, every thread joined at stop).
/// </summary>
public sealed class IscsiServer : IDisposable
{
    private readonly Dictionary<string, IscsiTargetState> _targets;
    private readonly ILogger _log;
    private readonly ConnectionHost _host;
    private int _nextTsih;

    public IscsiServer(IEnumerable<IscsiTarget> targets, IscsiServerOptions options, ILogger log)
    {
        _targets = targets.ToDictionary(t => t.Iqn, t => new IscsiTargetState(t), StringComparer.Ordinal);
        Options = options;
        _log = log;
        _host = new ConnectionHost("iscsi", options.MaxConnections,
            (socket, remote) => new IscsiConnection(socket, this, remote, log),
            new ConnectionHostEvents(
                endpoint => IscsiLog.Listening(log, endpoint),
                (endpoint, ex) => IscsiLog.AcceptFailed(log, endpoint, ex),
                (remote, limit) => IscsiLog.TooManyConnections(log, remote, limit),
                connections => IscsiLog.Stopping(log, connections)));
    }

    public IscsiServerOptions Options { get; }

    public IReadOnlyList<IPEndPoint> BoundEndpoints => [.. _host.BoundEndpoints.Cast<IPEndPoint>()];

    public int ConnectionCount => _host.ConnectionCount;

    internal IEnumerable<IscsiTargetState> Targets => _targets.Values;

    internal IscsiTargetState? FindTarget(string iqn) =>
        _targets.GetValueOrDefault(iqn) ?? _targets.Values.FirstOrDefault(t => string.Equals(t.Target.Iqn, iqn, StringComparison.OrdinalIgnoreCase));

    internal ushort NextTsih()
    {
        var tsih = (ushort)Interlocked.Increment(ref _nextTsih);
        return tsih == 0 ? (ushort)Interlocked.Increment(ref _nextTsih) : tsih;
    }

    /// <summary>The portal a SendTargets answer names: the address this connection reached.</summary>
    internal string PortalFor(Socket socket) => socket.LocalEndPoint?.ToString() ?? _host.BoundEndpoints[0].ToString()!;

    public void Listen(IPEndPoint endpoint) => _host.Listen(endpoint);

    /// <summary>Stops accepting, ends every connection and waits up to <paramref name="timeout"/> for their threads.</summary>
    public bool Stop(TimeSpan timeout) => _host.Stop(timeout);

    /// <summary>Ends every current connection (after a role change, so initiators see the new write protection).</summary>
    public int DisconnectClients() => _host.DisconnectClients();

    public void Dispose() => _host.Dispose();

    /// <summary>
    /// A login completed. A session with the same initiator port (name + ISID) is reinstated (RFC 7143 6.3.5):
    /// its connection is closed.
    /// </summary>
    internal void SessionStarted(ScsiNexus nexus, IscsiConnection connection, IscsiTargetState target)
    {
        foreach (var state in _targets.Values)
        {
            if (state.Sessions.TryRemove(nexus, out var old) && old != connection)
            {
                IscsiLog.Reinstated(_log, nexus.InitiatorName, nexus.Isid);
                old.Stop();
                state.Unit.NexusLost(nexus);
            }
        }

        target.Sessions[nexus] = connection;
    }

    internal void SessionEnded(ScsiNexus nexus, IscsiConnection connection)
    {
        foreach (var state in _targets.Values)
        {
            if (state.Sessions.TryGetValue(nexus, out var current) && current == connection)
            {
                state.Sessions.TryRemove(nexus, out _);
                state.Unit.NexusLost(nexus);
            }
        }
    }

    internal static void ResetUnit(IscsiTargetState target) => target.Unit.Reset(target.Sessions.Keys);
}
