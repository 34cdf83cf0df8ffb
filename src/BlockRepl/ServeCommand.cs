using System.Net.Sockets;
using BlockRepl.Core;
using BlockRepl.Nbd;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace BlockRepl;

/// <summary>
/// <c>blockrepl serve</c>: opens the volume, exports it over NBD, serves the admin endpoint, and on
/// SIGINT/SIGTERM stops accepting, finishes in-flight requests, flushes and exits 0.
/// </summary>
internal static class ServeCommand
{
    private static readonly TimeSpan DrainTimeout = TimeSpan.FromSeconds(30);

    public static async Task<int> RunAsync(ServeOptions options, CancellationToken cancellationToken)
    {
        var volumeOptions = options.ToVolumeOptions();
        NbdEndpoint? nbdEndpoint = null;
        if (!string.Equals(options.Nbd, "off", StringComparison.Ordinal))
        {
            try
            {
                nbdEndpoint = NbdEndpoint.Parse(options.Nbd);
            }
            catch (FormatException ex)
            {
                throw new UserError($"--nbd: {ex.Message}");
            }
        }

        var admin = AdminAddress.Parse(options.AdminAddress);
        Directory.CreateDirectory(options.DataDir);

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ";
        });
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        builder.Services.Configure<Microsoft.Extensions.Logging.Console.ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = DrainTimeout + TimeSpan.FromSeconds(5));
        builder.WebHost.ConfigureKestrel(k =>
        {
            if (admin.UnixPath is not null)
            {
                if (File.Exists(admin.UnixPath))
                {
                    File.Delete(admin.UnixPath); // a stale socket of a daemon that was killed
                }

                k.ListenUnixSocket(admin.UnixPath);
            }
            else
            {
                k.Listen(admin.Tcp!);
            }
        });

        var app = builder.Build();
        await using var appScope = app.ConfigureAwait(false);
        var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("blockrepl");

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
        DaemonLog.VolumeOpened(log, volume.Name, volume.Size, volume.ImagePath, volume.Role.Name(), volume.Disk.Name());

        var startedAt = DateTimeOffset.UtcNow;
        app.MapGet("/v1/status", () => Results.Json(StatusReport.Capture([volume], startedAt), StatusJsonContext.Default.StatusReport));

        using var nbd = new NbdServer([new NbdExport(volume, $"blockrepl volume {volume.Name}")], app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("nbd"));
        if (nbdEndpoint is not null)
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

        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException ex)
        {
            throw new UserError($"cannot listen for admin on {admin}: {ex.Message}");
        }

        DaemonLog.AdminListening(log, admin.ToString());
        app.Lifetime.ApplicationStopping.Register(() =>
        {
            DaemonLog.ShuttingDown(log);
            if (!nbd.Stop(DrainTimeout))
            {
                DaemonLog.DrainTimedOut(log, DrainTimeout.TotalSeconds);
            }
        });

        var nbdUri = nbd.BoundEndpoints.Count == 0 ? "off" : NbdUri(nbd.BoundEndpoints[0], volume.Name);
        Console.Out.WriteLine($"blockrepl: ready volume={volume.Name} nbd={nbdUri} admin={admin}");
        Console.Out.Flush();

        await app.WaitForShutdownAsync(cancellationToken).ConfigureAwait(false);
        nbd.Stop(DrainTimeout); // idempotent; covers a shutdown that did not come through the host
        volume.Dispose();       // fdatasync
        DaemonLog.VolumeClosed(log, volume.Name);
        if (admin.UnixPath is not null && File.Exists(admin.UnixPath))
        {
            File.Delete(admin.UnixPath);
        }

        return 0;
    }

    public static string NbdUri(NbdEndpoint endpoint, string export) => endpoint.EndPoint switch
    {
        UnixDomainSocketEndPoint unix => $"nbd+unix:///{export}?socket={unix}",
        System.Net.IPEndPoint ip => $"nbd://{ip}/{export}",
        _ => endpoint.ToString(),
    };
}
