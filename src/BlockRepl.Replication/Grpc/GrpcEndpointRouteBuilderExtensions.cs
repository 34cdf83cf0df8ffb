using Google.Protobuf;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace BlockRepl.Replication.Grpc;

/// <summary>
/// Maps gRPC methods onto Kestrel endpoints. The path is the gRPC method path,
/// "/" + package.Service + "/" + Method (e.g. "/blockrepl.v1.Admin/Status"). Limits come from
/// <see cref="GrpcServerOptions"/> in DI.
/// </summary>
internal static class GrpcEndpointRouteBuilderExtensions
{
    public static IEndpointConventionBuilder MapGrpcUnary<TRequest, TResponse>(
        this IEndpointRouteBuilder endpoints, string path, Func<TRequest, ServerCallContext, Task<TResponse>> handler)
        where TRequest : class, IMessage<TRequest>, new()
        where TResponse : class, IMessage<TResponse>
    {
        ArgumentNullException.ThrowIfNull(handler);
        var call = CreateHandler(endpoints, path);
        return endpoints.MapPost(path, http => call.HandleUnaryAsync(http, handler));
    }

    public static IEndpointConventionBuilder MapGrpcDuplex<TRequest, TResponse>(
        this IEndpointRouteBuilder endpoints,
        string path,
        Func<IAsyncStreamReader<TRequest>, IServerStreamWriter<TResponse>, ServerCallContext, Task> handler)
        where TRequest : class, IMessage<TRequest>, new()
        where TResponse : class, IMessage<TResponse>
    {
        ArgumentNullException.ThrowIfNull(handler);
        var call = CreateHandler(endpoints, path);
        return endpoints.MapPost(path, http => call.HandleDuplexAsync(http, handler));
    }

    private static ServerCallHandler CreateHandler(IEndpointRouteBuilder endpoints, string path)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        if (!path.StartsWith('/') || path.IndexOf('/', 1) < 0)
        {
            throw new ArgumentException($"'{path}' is not a gRPC method path (/package.Service/Method)", nameof(path));
        }

        var services = endpoints.ServiceProvider;
        var options = services.GetService<IOptions<GrpcServerOptions>>()?.Value ?? new GrpcServerOptions();
        var logger = services.GetService<ILoggerFactory>()?.CreateLogger("BlockRepl.Replication.Grpc")
            ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;
        return new ServerCallHandler(path, options, logger);
    }
}
