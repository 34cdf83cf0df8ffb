using BlockRepl.Core;
using Microsoft.Extensions.Logging;

namespace BlockRepl;

internal static partial class DaemonLog
{
    [LoggerMessage(LogEventIds.Daemon + 0, LogLevel.Information, "volume {Volume}: {Size} bytes, image {Image}, role {Role}, disk {Disk}")]
    public static partial void VolumeOpened(ILogger logger, string volume, long size, string image, string role, string disk);

    [LoggerMessage(LogEventIds.Daemon + 1, LogLevel.Information, "admin endpoint on {Address}")]
    public static partial void AdminListening(ILogger logger, string address);

    [LoggerMessage(LogEventIds.Daemon + 2, LogLevel.Information, "shutting down: finishing in-flight requests")]
    public static partial void ShuttingDown(ILogger logger);

    [LoggerMessage(LogEventIds.Daemon + 3, LogLevel.Warning, "NBD connections did not finish within {Seconds} s; closing anyway")]
    public static partial void DrainTimedOut(ILogger logger, double seconds);

    [LoggerMessage(LogEventIds.Daemon + 4, LogLevel.Information, "volume {Volume} flushed and closed")]
    public static partial void VolumeClosed(ILogger logger, string volume);

    [LoggerMessage(LogEventIds.Daemon + 5, LogLevel.Warning, "{Message}")]
    public static partial void Warning(ILogger logger, string message);

    /// <summary>One connection state change of a volume (<c>volume NAME: connection OLD -&gt; NEW</c>).</summary>
    [LoggerMessage(106, LogLevel.Information, "{Transition}")]
    public static partial void StateChange(ILogger logger, string transition);
}
