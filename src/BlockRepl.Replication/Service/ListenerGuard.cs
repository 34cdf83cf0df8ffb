using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.AspNetCore.Connections.Features;

namespace BlockRepl.Replication.Service;

/// <summary>
/// Keeps each gRPC service on its own listener: the replication listener serves only the Replication service,
/// and the admin listener (unix socket or TCP) everything else (Admin, grpc.health.v1, server reflection). Kestrel
/// serves every mapped service on every listener; this interceptor refuses a call that arrived on the wrong one
/// with PERMISSION_DENIED before its handler runs.
/// </summary>
/// <remarks>
/// The replication listener's connection middleware marks its connections with <see cref="ReplicationListenerKey"/>
/// in the connection's items; a call reads the mark from the connection it arrived on.
/// </remarks>
internal sealed class ListenerGuard : Interceptor
{
    /// <summary>Connection item set on every connection the replication listener accepts.</summary>
    public const string ReplicationListenerKey = "blockrepl.listener.replication";

    /// <summary>Connection item set once a gRPC call arrived on a connection (see the daemon's connection logging).</summary>
    public const string GrpcSeenKey = "blockrepl.grpc";

    private const string ReplicationServicePrefix = "/" + "blockrepl.v1.Replication" + "/";

    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(request, context);
    }

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(requestStream, context);
    }

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(request, responseStream, context);
    }

    public override Task DuplexStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream, ServerCallContext context,
        DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(requestStream, responseStream, context);
    }

    private static void Check(ServerCallContext context)
    {
        var items = context.GetHttpContext().Features.Get<IConnectionItemsFeature>()?.Items;
        if (items is not null)
        {
            items[GrpcSeenKey] = true;
        }

        var onReplicationListener = items?.ContainsKey(ReplicationListenerKey) == true;
        var isReplication = context.Method.StartsWith(ReplicationServicePrefix, StringComparison.Ordinal);
        if (onReplicationListener && !isReplication)
        {
            throw new RpcException(new Status(StatusCode.PermissionDenied, $"{context.Method} is not served on the replication port; use the admin address"));
        }

        if (!onReplicationListener && isReplication)
        {
            throw new RpcException(new Status(StatusCode.PermissionDenied, $"{context.Method} is served only on the replication listener (--listen)"));
        }
    }
}
