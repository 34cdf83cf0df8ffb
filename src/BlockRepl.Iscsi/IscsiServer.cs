using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
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
/// Accepts iSCSI initiators and runs each connection on a thread of its own (the same model as the NBD
/// server: blocking sockets, a connection cap, every thread joined at stop).
/// </summary>
public sealed class IscsiServer : IDisposable
{
    private readonly Dictionary<string, IscsiTargetState> _targets;
    private readonly ILogger _log;
    private readonly List<Socket> _listeners = [];
    private readonly List<IPEndPoint> _bound = [];
    private readonly ConcurrentDictionary<IscsiConnection, Thread> _connections = new();
    private volatile bool _stopping;
    private int _nextTsih;

    public IscsiServer(IEnumerable<IscsiTarget> targets, IscsiServerOptions options, ILogger log)
    {
        _targets = targets.ToDictionary(t => t.Iqn, t => new IscsiTargetState(t), StringComparer.Ordinal);
        Options = options;
        _log = log;
    }

    public IscsiServerOptions Options { get; }

    public IReadOnlyList<IPEndPoint> BoundEndpoints => _bound;

    public int ConnectionCount => _connections.Count;

    internal IEnumerable<IscsiTargetState> Targets => _targets.Values;

    internal IscsiTargetState? FindTarget(string iqn) =>
        _targets.GetValueOrDefault(iqn) ?? _targets.Values.FirstOrDefault(t => string.Equals(t.Target.Iqn, iqn, StringComparison.OrdinalIgnoreCase));

    internal ushort NextTsih()
    {
        var tsih = (ushort)Interlocked.Increment(ref _nextTsih);
        return tsih == 0 ? (ushort)Interlocked.Increment(ref _nextTsih) : tsih;
    }

    /// <summary>The portal a SendTargets answer names: the address this connection reached.</summary>
    internal string PortalFor(Socket socket) => socket.LocalEndPoint?.ToString() ?? _bound[0].ToString();

    public void Listen(IPEndPoint endpoint)
    {
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        try
        {
            socket.Bind(endpoint);
            socket.Listen(128);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        var bound = (IPEndPoint)socket.LocalEndPoint!;
        _listeners.Add(socket);
        _bound.Add(bound);
        var thread = new Thread(() => AcceptLoop(socket, bound)) { IsBackground = true, Name = $"iscsi-accept {bound}" };
        thread.Start();
        IscsiLog.Listening(_log, bound.ToString());
    }

    /// <summary>Stops accepting, ends every connection and waits up to <paramref name="timeout"/> for their threads.</summary>
    public bool Stop(TimeSpan timeout)
    {
        if (!_stopping)
        {
            _stopping = true;
            foreach (var socket in _listeners)
            {
                socket.Dispose();
            }

            IscsiLog.Stopping(_log, _connections.Count);
        }

        foreach (var connection in _connections.Keys)
        {
            connection.Stop();
        }

        var deadline = DateTime.UtcNow + timeout;
        foreach (var thread in _connections.Values)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero || !thread.Join(left))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Ends every current connection (after a role change, so initiators see the new write protection).</summary>
    public int DisconnectClients()
    {
        var count = 0;
        foreach (var connection in _connections.Keys)
        {
            connection.Stop();
            count++;
        }

        return count;
    }

    public void Dispose() => Stop(TimeSpan.FromSeconds(10));

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

    private void AcceptLoop(Socket listener, IPEndPoint endpoint)
    {
        while (!_stopping)
        {
            Socket client;
            try
            {
                client = listener.Accept();
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                if (_stopping)
                {
                    return;
                }

                if (ex is SocketException { SocketErrorCode: SocketError.ConnectionAborted or SocketError.Interrupted })
                {
                    continue;
                }

                IscsiLog.AcceptFailed(_log, endpoint.ToString(), ex);
                Thread.Sleep(100);
                continue;
            }

            var remote = client.RemoteEndPoint?.ToString() ?? "?";
            if (_connections.Count >= Options.MaxConnections || _stopping)
            {
                IscsiLog.TooManyConnections(_log, remote, Options.MaxConnections);
                client.Dispose();
                continue;
            }

            var connection = new IscsiConnection(client, this, remote, _log);
            var thread = new Thread(() => RunConnection(connection)) { IsBackground = true, Name = $"iscsi {remote}" };
            _connections[connection] = thread;
            thread.Start();
            if (_stopping)
            {
                connection.Stop();
            }
        }
    }

    private void RunConnection(IscsiConnection connection)
    {
        try
        {
            connection.Run();
        }
        finally
        {
            _connections.TryRemove(connection, out _);
            connection.Dispose();
        }
    }
}
