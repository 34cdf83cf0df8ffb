using System.Net;
using System.Net.Sockets;
using BlockRepl.Core;
using BlockRepl.Iscsi;
using BlockRepl.Nbd;
using BlockRepl.Replication.Service;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace BlockRepl;

internal static class ServeCommand
{
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(30);

    public static async Task<int> RunAsync(ServeOptions options, CancellationToken cancellationToken)
    {
        var volumeOptions = options.ToVolumeOptions();
        var replication = options.ToReplicationOptions();
        // --nbd is one endpoint or a comma-separated list (e.g. a unix socket for a local hypervisor and a TCP port
        // for a remote one); every listener serves the same exports.
        List<NbdEndpoint> nbdEndpoints = [];
        if (!string.Equals(options.Nbd, "off", StringComparison.Ordinal))
        {
            try
            {
                nbdEndpoints.AddRange(options.Nbd.Split(',', StringSplitOptions.TrimEntries).Select(NbdEndpoint.Parse));
            }
            catch (FormatException ex)
            {
                throw new UserError($"--nbd: {ex.Message}");
            }
        }

        var iscsiSettings = options.ToIscsiSettings();
        var admin = AdminAddress.Parse(options.AdminAddress);
        Directory.CreateDirectory(options.DataDir);

        ILogger? connectionLog = null;
        // The gRPC services need the volume, which opens after the host is built (it logs through the host's
        // loggers); DI resolves them at the first call, which can only come after both are assigned below.
        ReplicaService? replica = null;
        AdminService? adminService = null;
        IReadOnlyCollection<Volume>? volumes = null;
        // The host reads no appsettings.json and watches no directory: the daemon is configured by its own options
        // and config file. By default the host builder would load appsettings*.json from the current directory (often
        // the data directory) and put a file watcher on it that wakes on every write to an image there.
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ContentRootPath = AppContext.BaseDirectory,
            Args = ["--hostBuilder:reloadConfigOnChange=false"],
        });
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ";
        });
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        builder.Services.Configure<Microsoft.Extensions.Logging.Console.ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = DrainTimeout + TimeSpan.FromSeconds(5));
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = ReplicationSettings.MaxMessageBytes;
            o.MaxSendMessageSize = ReplicationSettings.MaxMessageBytes;
            o.Interceptors.Add<ListenerGuard>();
        });
        builder.Services.AddSingleton(_ => replica ?? throw new InvalidOperationException("the replication service is not ready"));
        builder.Services.AddSingleton(_ => adminService ?? throw new InvalidOperationException("the admin service is not ready"));
        builder.Services.AddGrpcReflection();
        builder.Services.AddGrpcHealthChecks().AddCheck("volumes", new VolumeHealthCheck(() => volumes ?? Array.Empty<Volume>()));
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = null;
            k.Limits.MinRequestBodyDataRate = null;
            // Replication batches are up to ~2 MiB: windows well above that keep one stream from stalling on
            // WINDOW_UPDATE round trips (Kestrel's defaults are 1 MiB per connection, 768 KiB per stream).
            k.Limits.Http2.InitialConnectionWindowSize = 16 * 1024 * 1024;
            k.Limits.Http2.InitialStreamWindowSize = 16 * 1024 * 1024;
            k.Limits.Http2.KeepAlivePingDelay = replication.PeerTimeout;
            k.Limits.Http2.KeepAlivePingTimeout = replication.PeerTimeout;
            if (admin.UnixPath is not null)
            {
                if (File.Exists(admin.UnixPath))
                {
                    File.Delete(admin.UnixPath); // a stale socket of a daemon that was killed
                }

                k.ListenUnixSocket(admin.UnixPath, l => l.Protocols = HttpProtocols.Http2);
            }
            else
            {
                k.Listen(admin.Tcp!, l => l.Protocols = HttpProtocols.Http2);
            }

            if (replication.Listen is not null)
            {
                k.Listen(replication.Listen, l =>
                {
                    l.Protocols = HttpProtocols.Http2;
                    l.Use(next => async connection =>
                    {
                        connection.Items[ListenerGuard.ReplicationListenerKey] = true;
                        // Kestrel drops a connection that is not HTTP/2 (garbage, a port scan, HTTP/1) on its own, at
                        // debug level; say it where an operator looks.
                        await next(connection).ConfigureAwait(false);
                        if (!connection.Items.ContainsKey(ListenerGuard.GrpcSeenKey))
                        {
                            ReplicationLog.NotGrpc(connectionLog!, connection.RemoteEndPoint?.ToString() ?? "?");
                        }
                    });
                });
            }
        });

        var app = builder.Build();
        await using var appScope = app.ConfigureAwait(false);
        var loggers = app.Services.GetRequiredService<ILoggerFactory>();
        var log = loggers.CreateLogger("blockrepl");
        connectionLog = loggers.CreateLogger("replication");

        Volume volume;
        try
        {
            volume = Volume.Open(volumeOptions, message => DaemonLog.Warning(log, message));
        }
        catch (Exception ex) when (ex is InvalidOperationException or InvalidDataException or IOException or UnauthorizedAccessException)
        {
            throw new UserError(ex.Message);
        }

        using var volumeScope = volume;
        volume.ConnectionHistory.Log = transition => DaemonLog.StateChange(log, transition);
        if (replication.Peer is not null || replication.Listen is not null)
        {
            volume.AttachPeer(replication.Mode, replication.OnPeerLoss, replication.SendQueueBytes, replication.Resync);
        }

        volume.DetachOnIoError = options.OnIoErrorDetach;
        using var faultWatch = options.FaultInjectionFile is { } faultFile
            ? new Timer(_ => volume.InjectDiskFailures = File.Exists(faultFile), null, TimeSpan.Zero, TimeSpan.FromMilliseconds(50))
            : null;
        if (options.FaultInjectionFile is not null)
        {
            DaemonLog.Warning(log, $"test hook: the local image fails with EIO while {options.FaultInjectionFile} exists");
        }

        DaemonLog.VolumeOpened(log, volume.Name, volume.Size, volume.ImagePath, volume.Role.Name(), volume.Disk.Name());

        using var nbd = new NbdServer([new NbdExport(volume, $"blockrepl volume {volume.Name}")], loggers.CreateLogger("nbd"));
        foreach (var nbdEndpoint in nbdEndpoints)
        {
            try
            {
                nbd.Listen(nbdEndpoint);
            }
            catch (SocketException ex)
            {
                throw new UserError($"cannot listen for NBD on {nbdEndpoint}: {ex.Message}");
            }
        }

        using var iscsi = iscsiSettings is null
            ? null
            : new IscsiServer([new IscsiTarget(iscsiSettings.Iqn, volume)], iscsiSettings.Server, loggers.CreateLogger("iscsi"));
        if (iscsi is not null)
        {
            try
            {
                iscsi.Listen(iscsiSettings!.Endpoint);
            }
            catch (SocketException ex)
            {
                throw new UserError($"cannot listen for iSCSI on {iscsiSettings!.Endpoint}: {ex.Message}");
            }
        }

        // A role change ends every front-end connection, so clients see the volume's new write protection.
        int DisconnectClients() => nbd.DisconnectClients() + (iscsi?.DisconnectClients() ?? 0);

        var settings = new ReplicationSettings { PeerTimeout = replication.PeerTimeout, ChecksumResync = replication.ChecksumResync };
        var replLog = loggers.CreateLogger("replication");
        var byName = new Dictionary<string, Volume>(StringComparer.Ordinal) { [volume.Name] = volume };
        volumes = byName.Values;
        replica = new ReplicaService(byName, settings, replLog);
        adminService = new AdminService(
            [new AdminVolume(volume, replication.Peer?.ToString(), DisconnectClients)], replica, DateTimeOffset.UtcNow, replLog, app.Lifetime.ApplicationStopping);
        if (replication.Listen is not null)
        {
            app.MapGrpcService<ReplicaService>();
        }

        // On the admin address only (ListenerGuard): the Admin service, grpc.health.v1 and server reflection, so a
        // stock gRPC tool can discover and call the daemon.
        app.MapGrpcService<AdminService>();
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();

        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException ex)
        {
            throw new UserError($"cannot listen on {admin}{(replication.Listen is null ? "" : " or " + replication.Listen)}: {ex.Message}");
        }

        DaemonLog.AdminListening(log, admin.ToString());
        var listenText = replication.Listen is null ? null : BoundReplicationAddress(app, replication.Listen);

        PeerConnector? connector = null;
        if (replication.Peer is not null)
        {
            connector = new PeerConnector(volume, replication.Peer, settings, replLog, _ => DisconnectClients());
            connector.Start();
        }

        app.Lifetime.ApplicationStopping.Register(() =>
        {
            DaemonLog.ShuttingDown(log);
            replica.Stop(); // Kestrel's graceful stop would otherwise wait for the inbound stream to end
            if (!nbd.Stop(DrainTimeout) | !(iscsi?.Stop(DrainTimeout) ?? true))
            {
                DaemonLog.DrainTimedOut(log, DrainTimeout.TotalSeconds);
            }
        });

        var nbdUri = nbd.BoundEndpoints.Count == 0 ? "off" : NbdUri(nbd.BoundEndpoints[0], volume.Name);
        var iscsiText = iscsi is null ? "" : $" iscsi={iscsi.BoundEndpoints[0]}";
        var extra = iscsiText + (listenText is null ? "" : $" listen={listenText}") + (replication.Peer is null ? "" : $" peer={replication.Peer}");
        // Further NBD listeners go last, numbered from 2, so the fields before them keep their place.
        for (var i = 1; i < nbd.BoundEndpoints.Count; i++)
        {
            extra += $" nbd{i + 1}={NbdUri(nbd.BoundEndpoints[i], volume.Name)}";
        }

        Console.Out.WriteLine($"blockrepl: ready volume={volume.Name} nbd={nbdUri} admin={admin}{extra}");
        Console.Out.Flush();

        await app.WaitForShutdownAsync(cancellationToken).ConfigureAwait(false);
        nbd.Stop(DrainTimeout); // idempotent; covers a shutdown that did not come through the host
        iscsi?.Stop(DrainTimeout);
        if (connector is not null)
        {
            // A primary that stops gives its peer a moment to acknowledge what is in flight.
            await volume.WaitForReplicationDrainAsync(TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false);
            await connector.DisposeAsync().ConfigureAwait(false);
        }

        replica.Stop();
        await replica.WaitForStreamsAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        volume.Dispose();       // fdatasync; records whether the stop was clean
        if (volume.ShutdownWarning is { } warning)
        {
            DaemonLog.Warning(log, warning);
        }

        DaemonLog.VolumeClosed(log, volume.Name);
        if (admin.UnixPath is not null && File.Exists(admin.UnixPath))
        {
            File.Delete(admin.UnixPath);
        }

        return 0;
    }

    private static string BoundReplicationAddress(WebApplication app, IPEndPoint requested)
    {
        if (requested.Port != 0)
        {
            return requested.ToString();
        }

        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
        foreach (var address in addresses)
        {
            if (Uri.TryCreate(address, UriKind.Absolute, out var uri) && uri.Scheme == "http" && IPAddress.TryParse(uri.Host.Trim('[', ']'), out var ip) && ip.Equals(requested.Address))
            {
                return new IPEndPoint(ip, uri.Port).ToString();
            }
        }

        return requested.ToString();
    }

    public static string NbdUri(NbdEndpoint endpoint, string export) => endpoint.EndPoint switch
    {
        UnixDomainSocketEndPoint unix => $"nbd+unix:///{export}?socket={unix}",
        IPEndPoint ip => $"nbd://{ip}/{export}",
        _ => endpoint.ToString(),
    };
}
